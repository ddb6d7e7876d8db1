"""`manage.py register-local NAME PATH` (or `register_local`): register a local MLX model directory."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from models_app.management.commands._cli import human_size, service_error
from models_app.services.cache import CacheError
from models_app.services.local_models import register_local_model


class Command(BaseCommand):
    help = "Register a model directory under LOCAL_MODEL_ROOTS so it can be listed, chatted with and served."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="The model's name here (no '/').")
        parser.add_argument("path", help="Its directory, inside one of LOCAL_MODEL_ROOTS.")
        parser.add_argument("--user", help="Staff username to register it as (default: the first superuser).")

    def handle(self, *args: Any, name: str, path: str, user: str | None, **options: Any) -> None:
        users = get_user_model().objects.filter(is_active=True, is_staff=True)
        account = (
            users.filter(username=user).first()
            if user
            else users.filter(is_superuser=True).order_by("id").first()
        )
        if account is None:
            raise CommandError(
                f"No active staff user {user!r}." if user else "No superuser yet: run `manage.py bootstrap`."
            )
        try:
            snapshot = register_local_model(name, path, user=account)
        except CacheError as exc:
            raise service_error(exc) from exc
        self.stdout.write(
            f"Registered {name} ({snapshot.model_type}, {human_size(snapshot.size_bytes)}, "
            f"{len(snapshot.files)} files) from {snapshot.path}"
        )
