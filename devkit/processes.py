"""Real processes for integration tests: Celery workers and the ASGI server, as `make run` starts them. Each is
a `dashboard.supervisor.Child` (its own process group, its output in a log file); the tests' policy is to fail
fast: a child that dies while a test waits for it raises at once, with the end of its log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection

from dashboard.supervisor import Child, wait_for
from devkit.redis_server import free_port

__all__ = [
    "ROOT",
    "AsgiServer",
    "CeleryWorker",
    "ManagedProcess",
    "child_env",
    "database_url",
    "get_json",
    "start_worker",
    "wait_for",
]

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


class ManagedProcess(Child):
    """A process a test starts, from the repository root, its output in `log_path`."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        super().__init__(log_path.stem, argv, env=env, cwd=ROOT, log_path=log_path)

    def children(self) -> list[int]:
        """The pids of its direct children (a Celery worker's pool)."""
        try:
            out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        except FileNotFoundError:
            return []
        return [int(x) for x in out.split()]


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
        self.wait_until(lambda: client.exists(self.presence_key()), timeout, f"worker {self.hostname}", 0.05)
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
        def answers() -> bool:
            try:
                urllib.request.urlopen(f"{self.url}/login/", timeout=1).read()
                return True
            except OSError:
                return False

        self.wait_until(answers, timeout, f"server {self.url}")
        return self


def get_json(url: str, timeout: float = 10) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
