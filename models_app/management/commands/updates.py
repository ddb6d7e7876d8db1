"""`manage.py updates [REPO ...] [--json]`: which pulled models have a newer commit on the Hub, and what changed."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from models_app.management.commands._cli import dumps, human_size, table
from models_app.services.updates import check_updates


class Command(BaseCommand):
    help = "Check the Hub for newer commits of pulled models: weights, config, tokenizer or chat template."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("repo_ids", nargs="*", help="Only these repos (default: all).")
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args: Any, repo_ids: list[str], **options: Any) -> None:
        results = check_updates(repo_ids=repo_ids or None)
        if options["json"]:
            self.stdout.write(dumps([r.as_json() for r in results]))
            return
        rows = []
        for r in results:
            if r.error_code:
                status = f"error: {r.error_code}"
            elif r.update_available:
                # A new commit need not change a file (an empty commit, a moved tag): say so, as --json does
                # with changes: [].
                status = "update: " + (
                    ", ".join(r.categories) if r.categories else "new commit, no file changes"
                )
            else:
                status = "up to date"
            to_fetch = human_size(r.bytes_to_fetch) if r.update_available else "-"
            rows.append((r.repo_id, r.ref, r.local_sha[:8], r.remote_sha[:8] or "-", status, to_fetch))
        self.stdout.write(table(("REPO", "REF", "LOCAL", "REMOTE", "STATUS", "TO FETCH"), rows))
        for r in results:
            if r.error:
                self.stdout.write(f"{r.repo_id}: {r.error}")
