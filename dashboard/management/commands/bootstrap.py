"""`manage.py bootstrap`: on a fresh install, create the first admin account and print its login once."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the first admin account if there is no user yet, and print its login once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        User = get_user_model()
        if User.objects.exists():
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        bar = "=" * 64
        self.stdout.write(
            f"\n{bar}\n  First run: an admin account was created. Log in with\n"
            f"    username: {username}\n    password: {password}\n"
            f"  This is shown once. Change it in the admin (Users) or with\n"
            f"  `manage.py changepassword {username}`.\n{bar}\n"
        )
