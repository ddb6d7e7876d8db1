"""`manage.py rm REPO [--revision REV] [--yes]`: delete a model's files from the cache (dry run without --yes)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from models_app.management.commands._cli import human_size, service_error, table
from models_app.services.cache import CacheError, delete_model


class Command(BaseCommand):
    help = "Delete one revision (--revision) or every revision of a model on this node. Shows what would go "
    help += "unless --yes is given."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("repo_id")
        parser.add_argument("--revision", help="A ref, a full commit sha or a sha prefix (default: all).")
        parser.add_argument("--yes", action="store_true", help="Really delete.")

    def handle(self, *args: Any, repo_id: str, revision: str | None, yes: bool, **options: Any) -> None:
        try:
            plan = delete_model(repo_id, revision, dry_run=not yes)
        except CacheError as exc:
            raise service_error(exc) from exc
        rows = [
            (i.commit_sha[:8], i.ref or "-", i.cache_root, human_size(i.bytes), i.path) for i in plan.items
        ]
        self.stdout.write(table(("SHA", "REF", "CACHE", "FREES", "PATH"), rows))
        note = " (a local model: its directory is left in place)" if plan.files_kept else ""
        if yes:
            self.stdout.write(
                f"Deleted {len(plan.items)} snapshot(s), freed {human_size(plan.bytes_freed)}{note}."
            )
        else:
            self.stdout.write(
                f"Would free {human_size(plan.bytes_freed)}{note}. Re-run with --yes to delete."
            )
