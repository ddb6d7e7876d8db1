"""A private redis-server for the tests and the benchmark: never the machine's own, so tests may kill and
restart it freely. (`make run` starts its own through dashboard/stack.py.)"""

from __future__ import annotations

import socket
from pathlib import Path

import redis

from dashboard import local_redis
from dashboard.supervisor import Child


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        # The same choice as `make run`: the machine's redis-server, else the venv's embedded valkey-server.
        binary = local_redis.server_binary()
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed. Install it: `sudo apt-get install redis-server` (Debian/Ubuntu) "
                "or `brew install redis` (macOS)."
            )
        self.binary = binary.path
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        # Its log goes to its own file (--logfile), not through us.
        self.child = Child(
            "redis",
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
        )
        self.child.wait_until(
            lambda: answers(self.url, timeout=0.2), timeout, f"redis-server on port {self.port}", 0.05
        )
        return self

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to clients."""
        if self.child is not None and self.child.alive():
            self.child.kill()
            self.child.process.wait(5)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace=5)

    def restart(self) -> None:
        self.kill()
        self.start()


def answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except redis.RedisError:
        return False
