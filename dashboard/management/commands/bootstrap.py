"""`manage.py bootstrap`: on a fresh install, create the first admin account and print its login once.
`make run` does not call it: runstack creates the account itself and shows the login after the stack is up."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from dashboard.welcome import login_box
from models_app.services.accounts import create_first_admin


class Command(BaseCommand):
    help = "Create the first admin account if there is no user yet, and print its login once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        login = create_first_admin(username=username)
        if login is not None:
            self.stdout.write(login_box(urls=[], login=login))
