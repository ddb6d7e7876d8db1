"""The whole product as child processes: web (uvicorn), workers, beat, and a private Redis when none is
configured or answering. `manage.py runstack` runs it; Ctrl-C stops everything.

A tiny Procfile-style supervisor rather than honcho/supervisord: it needs to decide about Redis first, and a
dead child should stop the stack loudly instead of leaving half a product running."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

COLORS = ["36", "35", "33", "32", "34", "31"]


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, ValueError):
        return False


def plan(
    *, host: str, port: int, node: str, python: str = sys.executable, downloads_concurrency: int = 2
) -> list[Service]:
    """Each worker reads the shared queues and this machine's own (`node.<node>`, `inference.<node>`), so
    another machine running the same stack against the same Redis and database shares the work, and what
    must run where the files are is routed there."""
    celery = [python, "-m", "celery", "-A", "dashboard"]
    return [
        Service(
            "web",
            [
                python,
                "-m",
                "uvicorn",
                "dashboard.asgi:application",
                "--host",
                host,
                "--port",
                str(port),
                "--no-access-log",
                "--lifespan",
                "off",
                # A closing websocket's channel-layer read could otherwise hold shutdown for its socket timeout.
                "--timeout-graceful-shutdown",
                "3",
            ],
        ),
        Service(
            "downloads",
            [
                *celery,
                "worker",
                "-Q",
                f"downloads,maintenance,node.{node}",
                "-c",
                str(downloads_concurrency),
                "-n",
                "downloads@%h",
                "--loglevel",
                "INFO",
            ],
        ),
        # One inference process per host: models are big and MLX is not fork-safe, so no prefork pool.
        Service(
            "inference",
            [
                *celery,
                "worker",
                "-Q",
                f"inference,inference.{node}",
                "-P",
                "solo",
                "-n",
                "inference@%h",
                "--loglevel",
                "INFO",
            ],
        ),
        Service("beat", [*celery, "beat", "--loglevel", "INFO"]),
    ]


class Stack:
    def __init__(self, services: list[Service], *, env: dict[str, str], var_dir: Path) -> None:
        self.services = services
        self.env = env
        self.var_dir = var_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def ensure_redis(self) -> subprocess.Popen[bytes] | None:
        """Use REDIS_URL when set; else the default port if something answers; else start redis-server."""
        if self.env.get("REDIS_URL"):
            return None
        port = self.env.get("LOCAL_REDIS_PORT", "6379")
        url = f"redis://127.0.0.1:{port}/0"
        if redis_answers(url):
            self.env["REDIS_URL"] = url
            return None
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit(
                f"No Redis answers on 127.0.0.1:{port} and redis-server is not installed.\n"
                "Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis), "
                "or set REDIS_URL to a Redis you run elsewhere."
            )
        redis_dir = self.var_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                binary,
                "--port",
                port,
                "--bind",
                "127.0.0.1",
                "--dir",
                str(redis_dir),
                "--save",
                "60 1",
                "--logfile",
                str(redis_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"redis-server did not start; see {redis_dir / 'redis.log'}")
            time.sleep(0.1)
        self.env["REDIS_URL"] = url
        self.processes["redis"] = process
        print(f"started redis-server on 127.0.0.1:{port} (data in {redis_dir})", flush=True)
        return process

    def _pump(self, name: str, process: subprocess.Popen[bytes], color: str) -> None:
        prefix = f"\033[{color}m{name:>10} |\033[0m " if sys.stdout.isatty() else f"{name:>10} | "
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            sys.stdout.write(prefix + raw.decode(errors="replace"))
            sys.stdout.flush()

    def start(self) -> None:
        for index, service in enumerate(self.services):
            process = subprocess.Popen(
                service.argv,
                env={**self.env, **service.env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
            )
            self.processes[service.name] = process
            threading.Thread(
                target=self._pump, args=(service.name, process, COLORS[index % len(COLORS)]), daemon=True
            ).start()

    def wait(self) -> int:
        """Block until a child dies or we are asked to stop; returns the exit code to use."""
        while not self._stopping.is_set():
            for name, process in list(self.processes.items()):
                code = process.poll()
                if code is not None:
                    print(f"{name} exited with code {code}; stopping everything", flush=True)
                    return code or 1
            self._stopping.wait(0.5)
        return 0

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            # Redis last: workers and beat want to say goodbye through it.
            apps = [p for n, p in self.processes.items() if n != "redis"]
            self._terminate(apps, timeout)
            if "redis" in self.processes:
                self._terminate([self.processes["redis"]], timeout)

    def _terminate(self, processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
        for process in processes:
            self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait(5)

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: int) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
