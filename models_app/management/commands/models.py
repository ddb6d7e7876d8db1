"""`manage.py models [QUERY] [--node N] [--user U] [--json]` (also `manage.py ls`): what this installation
holds, one line per snapshot; QUERY searches the same fields as the Models page and `GET /api/v1/models?q=`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from models_app.management.commands._cli import cli_user, dumps, human_ago, human_size, table
from models_app.selectors.snapshots import model_list


class Command(BaseCommand):
    help = "List downloaded and registered models (every snapshot, newest first per repo)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "query",
            nargs="?",
            default="",
            help="Words that must each appear in the repo id or the model type, e.g. qwen coder.",
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")
        parser.add_argument("--node", help="Only this node's snapshots.")
        parser.add_argument("--user", help="Only what this user may see (default: every model).")

    def handle(self, *args: Any, **options: Any) -> None:
        models = model_list(user=cli_user(options["user"]), node=options["node"], query=options["query"])
        if options["json"]:
            self.stdout.write(dumps([m.as_json() for m in models]))
            return
        if not models:
            if options["query"]:
                self.stdout.write(f"No model here matches {options['query']!r}.")
            else:
                self.stdout.write(
                    "No models yet. Pull one: manage.py pull mlx-community/SmolLM2-135M-Instruct-8bit"
                )
            return
        rows = [
            (
                m.repo_id,
                m.ref or "-",
                m.commit_sha[:8],
                m.status,
                human_size(m.size_bytes),
                human_ago(m.last_used_at),
                "yes" if m.update_available else "",
                m.path,
            )
            for m in models
        ]
        self.stdout.write(
            table(("REPO", "REF", "SHA", "STATUS", "SIZE", "LAST USED", "UPDATE", "PATH"), rows)
        )
