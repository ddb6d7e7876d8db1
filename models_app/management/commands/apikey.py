"""`manage.py apikey create --user alice --name ci` (prints the key once), `apikey list`, `apikey revoke PREFIX`."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app.services import apikeys


class Command(BaseCommand):
    help = "Create, list and revoke API keys for the REST and OpenAI-compatible APIs."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Issue a key; the raw key is printed once and never stored.")
        create.add_argument("--user", required=True, help="Username the key acts as")
        create.add_argument("--name", required=True, help="What the key is for, e.g. 'ci' or 'laptop'")
        listing = sub.add_parser("list", help="List keys (prefix, name, user, created, last used, state).")
        listing.add_argument("--user", help="Only this user's keys")
        listing.add_argument("--active", action="store_true", help="Hide revoked keys")
        revoke = sub.add_parser("revoke", help="Revoke a key by its prefix (as shown by `list`).")
        revoke.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except apikeys.ApiKeyError as exc:
            raise CommandError(str(exc)) from exc

    def _user(self, username: str):  # type: ignore[no-untyped-def]
        try:
            return get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user named {username!r}.") from None

    def _create(self, options: dict[str, Any]) -> None:
        key, raw = apikeys.create_apikey(user=self._user(options["user"]), name=options["name"])
        # The raw key goes to stdout alone, so `KEY=$(manage.py apikey create ...)` works; the note to stderr.
        self.stdout.write(raw)
        self.stderr.write(
            f"Created {key.display} for {key.user.username}. Store it now: it is not shown again."
        )

    def _list(self, options: dict[str, Any]) -> None:
        user = self._user(options["user"]) if options.get("user") else None
        keys = apikeys.list_apikeys(user=user, include_revoked=not options.get("active"))
        self.stdout.write(f"{'PREFIX':10} {'NAME':24} {'USER':16} {'CREATED':20} {'LAST USED':20} STATE")
        for key in keys:
            last_used = key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "never"
            state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            self.stdout.write(
                f"{key.prefix:10} {key.name[:24]:24} {key.user.username[:16]:16} "
                f"{key.created_at:%Y-%m-%d %H:%M}     {last_used:20} {state}"
            )

    def _revoke(self, options: dict[str, Any]) -> None:
        key = apikeys.revoke_apikey(apikeys.find_apikey(options["prefix"]))
        self.stdout.write(f"Revoked {key.display} ({key.name}, {key.user.username}).")
