"""`manage.py node-remove NAME [--yes]`: forget a machine for good (dry run without --yes)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from models_app.services import nodes


class Command(BaseCommand):
    help = (
        "Forget a machine that is down for good: its snapshots' rows go (the files on that machine are not "
        "touched), its queued pulls are cancelled. Shows what would go unless --yes is given."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="The machine's NODE_NAME.")
        parser.add_argument("--yes", action="store_true", help="Really forget it.")

    def handle(self, *args: Any, name: str, yes: bool, **options: Any) -> None:
        if not yes:
            preview = nodes.removal_preview(name)
            self.stdout.write(
                f"Would forget node {name}: {preview['snapshots']} snapshot row(s), cancel "
                f"{preview['active_jobs']} active pull(s). Files on that machine are not touched. "
                "Re-run with --yes to remove it."
            )
            return
        try:
            removal = nodes.remove_node(name)
        except nodes.NodeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Removed node {removal.node}: forgot {removal.snapshots} snapshot row(s), cancelled "
            f"{removal.jobs_cancelled} pull(s)."
        )
