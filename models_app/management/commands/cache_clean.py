"""`manage.py cache-clean` (or `cache_clean`): show, then with --yes carry out, a cache cleanup.

Defaults come from the CACHE_CLEANUP_* settings; the options override them for this run."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from models_app.management.commands._cli import dumps, human_size, service_error, table
from models_app.services.cache import CacheError
from models_app.services.cleanup import clean_cache, configured_policy
from models_app.units import parse_duration, parse_size


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


class Command(BaseCommand):
    help = (
        "Plan a cache cleanup (superseded revisions, models unused for --max-age, a --max-size budget, "
        "orphaned partial files) and print it. Nothing is deleted without --yes. With no options the "
        "CACHE_CLEANUP_* settings apply, and CACHE_CLEANUP_KEEP_REVISIONS defaults to 1: every revision of a "
        "repo but its newest is superseded and listed for deletion (--keep-revisions 0 keeps them all)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--max-age", help="Delete snapshots unused for this long (30d, 12h...).")
        parser.add_argument("--max-size", help="Keep each cache root under this size (50GB, 500MB...).")
        parser.add_argument(
            "--keep-revisions",
            type=int,
            help=(
                "Newest revisions kept per repo; older ones are deleted as superseded (default: "
                "CACHE_CLEANUP_KEEP_REVISIONS, 1; 0: keep every revision)."
            ),
        )
        parser.add_argument("--cache", help="Only this cache root (by name).")
        parser.add_argument("--yes", action="store_true", help="Really delete what the plan lists.")
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args: Any, **options: Any) -> None:
        configured = configured_policy()
        max_age = _duration(options["max_age"]) if options["max_age"] else configured.max_age
        max_size = _size(options["max_size"]) if options["max_size"] else configured.max_size
        keep = options["keep_revisions"]
        keep = configured.keep_revisions if keep is None else keep
        if keep < 0:
            raise CommandError("--keep-revisions must be 0 or more.")
        try:
            plan = clean_cache(
                max_age=max_age or None,
                max_size=max_size or None,
                keep_revisions=keep or None,
                dry_run=not options["yes"],
                cache=options["cache"],
            )
        except CacheError as exc:
            raise service_error(exc) from exc
        if options["json"]:
            self.stdout.write(dumps(plan.as_json()))
            return
        if not plan.items:
            self.stdout.write("Nothing to clean.")
            return
        rows = [
            (i.repo_id, (i.revision or "-") if i.kind == "snapshot" else "-", i.commit_sha[:8] or "-",
             i.reason, human_size(i.bytes), i.path)
            for i in plan.items
        ]  # fmt: skip
        self.stdout.write(table(("REPO", "REF", "SHA", "REASON", "FREES", "PATH"), rows))
        if plan.dry_run:
            self.stdout.write(
                f"Would free {human_size(plan.total_bytes)} ({plan.total_bytes} bytes) in {len(plan.items)} "
                "item(s). Dry run: re-run with --yes to delete."
            )
            return
        self.stdout.write(
            f"Freed {human_size(plan.bytes_freed)} ({plan.bytes_freed} bytes) in {len(plan.deleted)} item(s)."
        )
        for reason in plan.skipped:
            self.stdout.write(f"Skipped {reason}")
