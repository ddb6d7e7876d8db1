"""`manage.py verify REPO [--revision REV]`: hash a model's files against the Hub's metadata."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from models_app.management.commands._cli import human_size, service_error
from models_app.models import Snapshot
from models_app.services.cache import CacheError, match_revision, newest_first
from models_app.services.verify import verify_model


class Command(BaseCommand):
    help = (
        "Verify every file of a model's snapshots on this node (sha256 for LFS files, git sha1 for others)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("repo_id")
        parser.add_argument("--revision", help="A ref, a full commit sha or a sha prefix (default: all).")

    def handle(self, *args: Any, repo_id: str, revision: str | None, **options: Any) -> None:
        snapshots = list(
            newest_first(
                Snapshot.objects.select_related("repository").filter(
                    repository__repo_id=repo_id, node=settings.NODE_NAME
                )
            ).exclude(status=Snapshot.Status.DELETED)
        )
        try:
            targets = snapshots if revision is None else match_revision(snapshots, revision)
        except CacheError as exc:
            raise service_error(exc) from exc
        if not targets:
            label = repo_id if revision is None else f"{repo_id}@{revision}"
            raise CommandError(f"model_not_found: {label} has no snapshot on this node.")
        failed = 0
        for snapshot in targets:
            result = verify_model(snapshot)
            self.stdout.write(
                f"{repo_id}@{snapshot.short_sha}: {result.status} "
                f"({result.files_checked} files, {human_size(result.bytes_hashed)} hashed)"
            )
            for path in result.missing:
                self.stdout.write(f"  missing: {path}")
            for path, why in result.mismatched.items():
                self.stdout.write(f"  corrupt: {path} ({why})")
            failed += not result.ok
        if failed:
            raise CommandError(
                f"integrity: {failed} snapshot(s) failed verification.\n  -> Pull them again "
                f"(manage.py pull {repo_id}{f' --revision {revision}' if revision else ''}): the pull "
                "fetches the missing and corrupt files again, in one go, and keeps the sound ones."
            )
