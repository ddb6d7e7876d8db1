"""The first admin account of a fresh install. Its password exists only in the return value of
`create_first_admin`: the caller shows it once (runstack, after the stack is up; `manage.py bootstrap`)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction


@dataclass(frozen=True)
class FirstLogin:
    username: str
    password: str


def create_first_admin(*, username: str = "admin") -> FirstLogin | None:
    """Create a superuser with a random password when the install has no user yet; None when it has one."""
    User = get_user_model()
    with transaction.atomic():
        if User.objects.exists():
            return None
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
    return FirstLogin(username=username, password=password)
