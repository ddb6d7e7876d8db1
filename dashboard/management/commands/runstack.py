"""`manage.py runstack`: web, workers, beat (and Redis if needed) in one terminal. A crashed child is restarted;
Ctrl-C stops them all. On a fresh install it creates the first admin account and shows its login last, once the
stack answers."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any
from urllib.parse import urljoin

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection
from django.urls import reverse

from dashboard.stack import Stack, plan, say
from dashboard.welcome import WILDCARDS, lan_address, local_url, login_box, wait_ready
from models_app.services.accounts import FirstLogin, create_first_admin
from models_app.services.health import system_health

# On a loaded laptop the inference worker's first MLX import can take a minute; the box waits this long at most.
READY_TIMEOUT = 300.0


def _healthy() -> bool:
    try:
        return bool(system_health()["ok"])
    except Exception:  # a database that is not there yet is "not ready", never a crash of the announcer
        return False


class Command(BaseCommand):
    help = (
        "Run the whole product: ASGI server, download/maintenance and inference workers, beat, Redis if needed. "
        "A child that dies is restarted; Ctrl-C stops everything."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--host",
            default=os.environ.get("HOST", "127.0.0.1"),
            help="address to listen on (env HOST); 0.0.0.0 for every interface, e.g. the LAN",
        )
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")), help="env PORT")
        parser.add_argument("--downloads-concurrency", type=int, default=2)
        parser.add_argument(
            "--workers-only",
            action="store_true",
            help="another machine of a cluster: only this machine's download and inference workers (no web "
            "server, no beat), against the first machine's REDIS_URL and DATABASE_URL; NODE_NAME names it",
        )
        parser.add_argument(
            "--no-bootstrap",
            action="store_true",
            help="do not create the first admin account on a fresh install",
        )

    def handle(
        self,
        *args: Any,
        host: str,
        port: int,
        downloads_concurrency: int,
        no_bootstrap: bool,
        workers_only: bool,
        **options: Any,
    ) -> None:
        env = dict(os.environ)
        # Children must find the same secrets and data this process found (generated into var/ on first run).
        env.setdefault("VAR_DIR", str(settings.VAR_DIR))
        env.setdefault("NODE_NAME", settings.NODE_NAME)  # the node queues below are named after it
        if workers_only:
            self._check_joinable(env)
        stack = Stack(
            plan(
                host=host,
                port=port,
                node=settings.NODE_NAME,
                downloads_concurrency=downloads_concurrency,
                workers_only=workers_only,
            ),
            env=env,
            var_dir=settings.VAR_DIR,
        )
        if workers_only:
            self._run_workers(stack)
            return
        stack.ensure_redis()
        # This process reads the workers' presence (the readiness check) from the Redis its children use, which
        # ensure_redis may have chosen only now.
        settings.REDIS_URL = env["REDIS_URL"]
        # After Redis: a stack that cannot start must not have created an account whose password nobody saw.
        # The password stays in this process's memory only (never in a child's argv, env or a file).
        login = None if no_bootstrap else create_first_admin()

        _start_until_signalled(stack)
        say(
            f"\n  MLX Control Room is starting on {local_url(host, port)} (the login follows once it is up)\n"
        )
        announced = threading.Event()
        threading.Thread(
            target=self._announce, args=(stack, host, port, login, announced), daemon=True
        ).start()
        code = stack.wait()
        say("stopping…")
        stack.stop()
        if login is not None and not announced.is_set():
            # Shown once means shown at least once: a stack stopped before it came up still hands over the login.
            say(login_box(urls=[], login=login, notes=["The stack was stopped before it was up."]))
        say("stopped.")
        if code:
            raise SystemExit(code)

    @staticmethod
    def _check_joinable(env: dict[str, str]) -> None:
        """A machine that joins a cluster needs the cluster's Redis and database: a private Redis or a SQLite
        file of its own would make it a cluster of one that nobody sends work to."""
        if not env.get("REDIS_URL"):
            raise SystemExit(
                "--workers-only joins the machine that runs the web server: set REDIS_URL to its Redis "
                "(and DATABASE_URL to its PostgreSQL). See README, Production."
            )
        if connection.vendor == "sqlite":
            say(
                "note: DATABASE_URL is a SQLite file; another machine can share it only if it is on this "
                "machine's disk. Use PostgreSQL for several machines (README, Production)."
            )

    def _run_workers(self, stack: Stack) -> None:
        _start_until_signalled(stack)
        say(
            f"\n  Workers of machine {settings.NODE_NAME} are starting; its models appear on the web server.\n"
        )
        code = stack.wait()
        say("stopping…")
        stack.stop()
        say("stopped.")
        if code:
            raise SystemExit(code)

    def _announce(
        self, stack: Stack, host: str, port: int, login: FirstLogin | None, announced: threading.Event
    ) -> None:
        url = local_url(host, port)
        allowed = [h.lstrip(".") for h in settings.ALLOWED_HOSTS if h != "*"]
        try:
            ready = wait_ready(
                urljoin(url, reverse("login")),
                host_header=allowed[0] if allowed else "localhost",
                healthy=_healthy,
                stop=stack.stop_requested,
                timeout=READY_TIMEOUT,
            )
        finally:
            connection.close()  # this thread's own database connection
        if stack.stop_requested.is_set():
            return
        urls, notes = [url], []
        lan = lan_address() if host in WILDCARDS else None
        if lan:
            urls.append(f"http://{lan}:{port}/")
            if lan not in settings.ALLOWED_HOSTS and "*" not in settings.ALLOWED_HOSTS:
                notes.append(
                    f"For the network address, add {lan} to ALLOWED_HOSTS (see README, Configuration)."
                )
        if not ready:
            notes.append(
                f"Not every part answered within {READY_TIMEOUT:.0f} s: see {url}healthz and the log above."
            )
        say(login_box(urls=urls, login=login, notes=notes))
        announced.set()


def _start_until_signalled(stack: Stack) -> None:
    """Start the children; SIGINT or SIGTERM asks the stack to stop (its wait() returns at the next tick)."""

    def on_signal(signum: int, _frame: object) -> None:
        stack.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack.start()
