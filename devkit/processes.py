"""Real processes for integration tests: Celery workers and the ASGI server, as `make run` starts them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection

from devkit.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


def database_url() -> str:
    """The URL of the database the test process uses right now (the test database, once it is set up)."""
    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{cfg['NAME']}"
    user = cfg.get("USER") or ""
    password = f":{cfg['PASSWORD']}" if cfg.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{cfg.get('HOST') or 'localhost'}:{cfg.get('PORT') or 5432}/{cfg['NAME']}"


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        TEST_REDIS_URL=settings.REDIS_URL,
        HF_HUB_CACHE=str(settings.HF_HUB_CACHE),
        HF_ENDPOINT=settings.HF_ENDPOINT,
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def wait_for(predicate: Callable[[], bool], timeout: float, message: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(message)


class ManagedProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        try:
            out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        except FileNotFoundError:
            return []
        return [int(x) for x in out.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(5)
            except ProcessLookupError:
                pass
        else:
            # The main process may be gone with its pool children still alive.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


class CeleryWorker(ManagedProcess):
    def __init__(
        self, *, name: str, queues: str, pool: str, concurrency: int, env: dict[str, str], log_dir: Path
    ) -> None:
        self.hostname = f"{name}@{os.uname().nodename}"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dashboard",
            "worker",
            "-Q",
            queues,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            self.hostname,
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        super().__init__(argv, env, log_dir / f"{name}.log")

    def presence_key(self) -> str:
        return f"{os.environ.get('REDIS_PREFIX') or settings.REDIS_PREFIX}:workers:{self.hostname}"

    def wait_ready(self, timeout: float = 60.0) -> CeleryWorker:
        client = redis.Redis.from_url(settings.REDIS_URL)

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"worker {self.hostname} exited:\n{self.log()[-4000:]}")
            return bool(client.exists(self.presence_key()))

        wait_for(ready, timeout, f"worker {self.hostname} not ready:\n{self.log()[-4000:]}")
        return self


def start_worker(
    *,
    name: str,
    queues: str,
    log_dir: Path,
    pool: str = "prefork",
    concurrency: int = 1,
    env: dict[str, str] | None = None,
) -> CeleryWorker:
    return CeleryWorker(
        name=name, queues=queues, pool=pool, concurrency=concurrency, env=env or child_env(), log_dir=log_dir
    ).wait_ready()


class AsgiServer(ManagedProcess):
    def __init__(self, *, env: dict[str, str], log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "dashboard.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lifespan",
            "off",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "3",
        ]
        super().__init__(argv, env, log_dir / f"web-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> AsgiServer:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"server exited:\n{self.log()[-4000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/login/", timeout=1).read()
                return True
            except OSError:
                return False

        wait_for(ready, timeout, f"server not ready:\n{self.log()[-4000:]}", interval=0.1)
        return self


def get_json(url: str, timeout: float = 10) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
