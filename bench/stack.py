"""The processes a benchmark runs against: the product (web + workers, as `make run` starts them, with a
private Redis, SQLite database and HF cache) and the peer, `mlx_lm.server`.

Every child is a `dashboard.supervisor.Child` (its own process group, a log file under the run directory);
the benchmark's policy is to start its children once and stop them once, and a child that dies while it is
awaited fails the section at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dashboard.supervisor import Child, stop_all, wait_for
from devkit.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 400
    except (OSError, urllib.error.URLError):
        return False


def start_child(name: str, argv: list[str], *, env: dict[str, str], log_dir: Path) -> Child:
    return Child(name, argv, env=env, cwd=ROOT, log_path=log_dir / f"{name}.log")


# ----------------------------------------------------------------------------- the product


@dataclass
class Product:
    """The product, isolated: its own Redis, VAR_DIR (SQLite), HF cache and key prefix."""

    run_dir: Path
    hub_url: str
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    api_key: str = ""
    session_cookie: str = ""
    username: str = "bench"
    _redis: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def hf_cache(self) -> Path:
        return self.run_dir / "hf-cache"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def prepare(self) -> None:
        """Redis, environment, migrations, and Django set up in this process against the same database."""
        self._redis = RedisServer(self.run_dir / "redis").start()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DEV_SECRETS": "1",
            "DEBUG": "0",
            "VAR_DIR": str(self.run_dir / "var"),
            "HF_HUB_CACHE": str(self.hf_cache),
            "HF_ENDPOINT": self.hub_url,
            "REDIS_URL": self._redis.url,
            "REDIS_PREFIX": "mlxcr-bench",
            "DOWNLOAD_DISK_RESERVE": "100MB",
            "HUB_XET_LOCAL_CAS": "1",  # the benchmark's local Hub serves its Xet case from a local CAS
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "LOG_HOPS": "1",  # the inference worker logs each request's hops (bench/hops.py)
        }
        # Some settings read the environment at import: this process must see what the children see.
        os.environ.update(self.env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=self.env,
            check=True,
        )
        import django

        django.setup()
        self._create_user()

    def _create_user(self) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        from models_app.models import ApiKey

        User = get_user_model()
        user, _ = User.objects.get_or_create(
            username=self.username, defaults={"is_staff": True, "is_superuser": True}
        )
        _, self.api_key = ApiKey.issue(user=user, name="bench")
        client = Client()
        client.force_login(user)  # a real row in the session table, which the server reads
        self.session_cookie = client.cookies["sessionid"].value

    def register_model(self, repo_id: str, model_dir: Path) -> str:
        """Put `model_dir` into the HF cache as huggingface_hub lays it out and have the product import it
        (its reconcile service: the path other tools' downloads take). Returns the commit sha used."""
        commit = hashlib.sha1(f"{repo_id}\n{model_dir.stat().st_mtime_ns}".encode()).hexdigest()
        repo_dir = self.hf_cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo_dir / "snapshots" / commit
        (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
        snapshot.mkdir(parents=True, exist_ok=True)
        from bench.models import model_files

        for rel, src in model_files(model_dir).items():
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            blob = repo_dir / "blobs" / digest
            if not blob.exists():
                try:
                    os.link(src, blob)  # same filesystem: no copy
                except OSError:
                    shutil.copy(src, blob)
            link = snapshot / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(blob, link.parent))
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        from models_app.services.reconcile import reconcile_cache

        report = reconcile_cache()
        from models_app.models import Snapshot

        if not Snapshot.objects.filter(repository__repo_id=repo_id, status="ready").exists():
            raise RuntimeError(f"the product did not import {repo_id}: {report.skipped}")
        return commit

    def start(self, *, inference: bool = True, downloads: bool = True) -> None:
        """Web and workers with the argv `manage.py runstack` uses (beat left out: its periodic reconcile and
        update checks would land at random points of the measurements)."""
        from django.conf import settings

        from dashboard.stack import plan

        wanted = {"web"} | ({"inference"} if inference else set()) | ({"downloads"} if downloads else set())
        for service in plan(host="127.0.0.1", port=self.port, node=settings.NODE_NAME):
            if service.name in wanted:
                self.children.append(
                    start_child(
                        service.name, service.argv, env={**self.env, **service.env}, log_dir=self.log_dir
                    )
                )
        wait_for(
            lambda: self._check() and http_ok(f"{self.url}/login/"), 60, "web server not ready after 60 s"
        )
        for queue in ("inference",) * inference + ("downloads",) * downloads:
            wait_for(
                lambda q=queue: self._check() and self._worker_up(q),
                90,
                f"{queue} worker not ready after 90 s",
                0.25,
            )

    def _check(self) -> bool:
        """Any child that died fails the wait at once (the benchmark restarts nothing)."""
        for child in self.children:
            child.check()
        return True

    @staticmethod
    def _worker_up(queue: str) -> bool:
        from models_app.services.workers import workers_for_queue

        return bool(workers_for_queue(queue))

    def stop(self) -> None:
        stop_all(self.children)
        self.children.clear()
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


# ----------------------------------------------------------------------------- the peer: mlx_lm.server


@dataclass
class MlxServer:
    model_dir: Path
    log_dir: Path
    port: int = field(default_factory=free_port)
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlxServer:
        argv = [
            sys.executable,
            "-m",
            "mlx_lm",
            "server",
            "--model",
            str(self.model_dir),
            "--port",
            str(self.port),
        ]
        argv += ["--log-level", "WARNING"]
        self.child = start_child(
            "mlx_lm.server", argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, log_dir=self.log_dir
        )
        self.child.wait_until(lambda: http_ok(f"{self.url}/v1/models"), 120, interval=0.25)
        return self

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None


@contextlib.contextmanager
def busy_process() -> Iterator[None]:
    """A second CPU-bound process for as long as the block runs: a Python busy loop, one core's worth."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # running before the measurement starts
        yield
    finally:
        process.kill()
        process.wait()
