"""`manage.py runstack`: web, workers, beat (and Redis if needed) in one terminal; Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from dashboard.stack import Stack, plan


class Command(BaseCommand):
    help = "Run the whole product: ASGI server, download/maintenance and inference workers, beat, Redis if needed."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--downloads-concurrency", type=int, default=2)

    def handle(self, *args: Any, host: str, port: int, downloads_concurrency: int, **options: Any) -> None:
        env = dict(os.environ)
        # Children must find the same secrets and data this process found (generated into var/ on first run).
        env.setdefault("VAR_DIR", str(settings.VAR_DIR))
        env.setdefault("NODE_NAME", settings.NODE_NAME)  # the node queues below are named after it
        stack = Stack(
            plan(host=host, port=port, node=settings.NODE_NAME, downloads_concurrency=downloads_concurrency),
            env=env,
            var_dir=settings.VAR_DIR,
        )
        stack.ensure_redis()

        def on_signal(signum: int, _frame: object) -> None:
            stack._stopping.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        stack.start()
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.stdout.write(
            self.style.SUCCESS(f"\n  MLX Control Room is starting: open http://{shown_host}:{port}/\n")
        )
        code = stack.wait()
        self.stdout.write("stopping…")
        stack.stop()
        self.stdout.write("stopped.")
        if code:
            sys.exit(code)
