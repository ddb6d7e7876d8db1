"""`manage.py pull REPO`: download a model through the same job pipeline as the web page, and follow it."""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from models_app.management.commands._cli import (
    cli_credential,
    cli_user,
    human_duration,
    human_size,
    service_error,
)
from models_app.models import DownloadJob

POLL_INTERVAL = 0.5
BAR_WIDTH = 30


def progress_line(job: DownloadJob) -> str:
    """`[#######.......]  45.2%  12.3 MB / 27.2 MB  4.1 MB/s  ETA 0:03`"""
    filled = int(BAR_WIDTH * min(job.percent, 100.0) / 100)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    total = human_size(job.bytes_total) if job.bytes_total else "?"
    speed = f"{human_size(job.speed_bps)}/s" if job.speed_bps else "-"
    return (
        f"[{bar}] {job.percent:5.1f}%  {human_size(job.bytes_done)} / {total}  {speed}  "
        f"ETA {human_duration(job.eta_seconds)}"
    )


class Command(BaseCommand):
    help = "Pull a model from the Hub into the cache (waits with a progress bar unless --no-wait)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("repo_id", help="org/name, or a Hub URL")
        parser.add_argument("--revision", default="main", help="Branch, tag or commit sha (default: main).")
        parser.add_argument("--credential", help="Name of a stored Hub token to use.")
        parser.add_argument("--user", help="Pull on behalf of this user (owner of the job and credential).")
        parser.add_argument("--force", action="store_true", help="Download again even if cached.")
        parser.add_argument("--cache", help="Cache root name (default: default).")
        parser.add_argument(
            "--node",
            help='The machine to download to, by NODE_NAME (default: this one); "any": the live machine whose '
            "cache root has room (it says which it picked and why).",
        )
        parser.add_argument("--no-wait", action="store_true", help="Queue the job and return.")
        parser.add_argument("--timeout", type=float, help="Give up waiting after this many seconds.")

    def handle(self, *args: Any, **options: Any) -> None:
        from models_app.services import hub
        from models_app.services.errors import DownloadError

        user = cli_user(options["user"])
        credential = cli_credential(options["credential"], user)
        try:
            job = hub.download_model(
                options["repo_id"],
                options["revision"],
                credential=credential,
                cache=options["cache"],
                force=options["force"],
                user=user,
                node=options["node"],
            )
        except DownloadError as exc:
            raise service_error(exc) from exc
        except PermissionDenied as exc:
            raise CommandError(f"forbidden: {exc}") from exc
        label = f"{job.repository.repo_id}@{job.revision}"
        self.stdout.write(f"Job {job.id}: {label} ({job.state})")
        if job.node_choice:
            self.stdout.write(job.node_choice)
        if job.credential is not None:
            self.stdout.write(self._token_line(job, named=credential is not None))
        if options["no_wait"]:
            return
        try:
            job = self._follow(job, options["timeout"])
        except KeyboardInterrupt:
            self.stdout.write(f"\nStopped watching; job {job.id} goes on in the background.")
            raise SystemExit(130) from None
        if job.state == DownloadJob.State.SUCCEEDED:
            path = job.snapshot.path if job.snapshot else ""
            self.stdout.write(f"Pulled {label} ({job.commit_sha[:8]}) into {path}")
            return
        raise self._failure(job)

    @staticmethod
    def _token_line(job: DownloadJob, *, named: bool) -> str:  # job.credential is set
        """Which stored token the pull sends, by name and masked form (never the token)."""
        from models_app.services.credentials import label

        how = "" if named else ", the default one"
        return f"Hub token: {label(job.credential)}{how}."

    def _follow(self, job: DownloadJob, timeout: float | None) -> DownloadJob:
        tty = self.stdout.isatty()  # a terminal gets one bar redrawn in place
        deadline = time.monotonic() + timeout if timeout else None
        last_printed = (None, -1)
        while True:
            job.refresh_from_db()
            if tty:
                self.stdout.write("\r" + progress_line(job), ending="")
                self.stdout.flush()
            else:
                # Logs and pipes get a line per 10% and per state change, not a line every half second.
                mark = (job.state, int(job.percent // 10))
                if mark != last_printed and (
                    job.state == DownloadJob.State.RUNNING or mark[0] != last_printed[0]
                ):
                    self.stdout.write(f"{job.state:9} {progress_line(job)}")
                    last_printed = mark
            if job.state in DownloadJob.FINAL_STATES:
                if tty:
                    self.stdout.write("")
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise CommandError(f"Gave up waiting after {timeout:g}s; job {job.id} is still {job.state}.")
            time.sleep(POLL_INTERVAL)

    def _failure(self, job: DownloadJob) -> CommandError:
        from models_app.services import errors

        code = job.error_code or job.state
        action = errors.action_for_job(job)  # "" for a code without one (a job cancelled by hand)
        message = job.error_message or f"The download ended {job.state}."
        return CommandError(f"{code}: {message}" + (f"\n  -> {action}" if action else ""), returncode=2)
