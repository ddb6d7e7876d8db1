"""`manage.py search QUERY [--sort S] [--author A] [--all] [--json]`: MLX models on the Hub, with size,
quantization and whether each fits this machine (the Discover page's service)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from models_app.management.commands._cli import (
    cli_credential,
    cli_user,
    dumps,
    human_size,
    service_error,
    table,
)
from models_app.services import credentials, discover, discover_details


class Command(BaseCommand):
    help = "Search the Hub for MLX models: size, quantization, downloads, and whether each fits here."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("query", nargs="?", default="", help="Words in the repo id, e.g. qwen coder.")
        parser.add_argument("--sort", choices=sorted(discover.SORTS), default="downloads")
        parser.add_argument("--author", default="", help="Only this Hub user or organisation.")
        parser.add_argument("--all", action="store_true", help="Not only repos tagged for mlx.")
        parser.add_argument("--credential", help="Name of a stored Hub token (private repos it reads).")
        parser.add_argument("--user", help="Search as this user (their default token, their cache view).")
        parser.add_argument("--cursor", default="", help="The next_cursor a previous --json search gave.")
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = cli_user(options["user"])
        credential = cli_credential(options["credential"], user)
        # --credential names the one token to search with; else all the user's, the default first.
        tokens = [credential] if credential is not None else credentials.search_credentials(user)
        try:
            page = discover.search(
                options["query"],
                sort=options["sort"],
                author=options["author"],
                mlx_only=not options["all"],
                credentials=tokens,
                cursor=options["cursor"],
                user=user,
            )
        except discover.DiscoverError as exc:
            raise service_error(exc) from exc
        page.results = discover_details.complete(page.results, credentials=tokens, user=user)
        for warning in page.warnings:
            self.stderr.write(warning)
        if options["json"]:
            self.stdout.write(dumps([r.as_json() for r in page.results]))
            if page.next_cursor:
                self.stderr.write(f"More results: --cursor {page.next_cursor}")
            return
        if not page.results:
            self.stdout.write(f"No MLX models on the Hub match {page.query!r}.")
            return
        rows = []
        for group in page.groups:
            for r in group.results:
                rows.append(
                    (
                        r.hub.repo_id,
                        r.hub.quantization or "-",
                        _params(r.hub.parameters),
                        human_size(r.hub.weights_bytes),
                        r.hub.downloads,
                        r.hub.likes,
                        r.verdict,
                        ("here, update" if r.update_available else "here") if r.here else "",
                    )
                )
        headers = ("REPO", "QUANT", "PARAMS", "SIZE", "DOWNLOADS", "LIKES", "FITS", "CACHED")
        self.stdout.write(table(headers, rows))
        if page.next_cursor:
            self.stdout.write(f"More results: search ... --cursor {page.next_cursor}")


def _params(n: int | None) -> str:
    if not n:
        return "-"
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
