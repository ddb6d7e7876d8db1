"""Formatting shared by the model and cache commands (a leading underscore: Django does not list it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core.management.base import CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone


def human_size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    seconds = max(0.0, (timezone.now() - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "just now"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, cls=DjangoJSONEncoder)


def service_error(exc: Exception) -> CommandError:
    """A CommandError (exit status 1) carrying a service error's code, message and action."""
    code = getattr(exc, "code", "error")
    message = getattr(exc, "message", "") or str(exc)
    action = getattr(exc, "action", "")
    return CommandError(f"{code}: {message}" + (f"\n  -> {action}" if action else ""))


def cli_user(username: str | None) -> Any:
    """The active user named by --user, or None."""
    from django.contrib.auth import get_user_model

    if not username:
        return None
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise CommandError(f"No active user {username!r}.")
    return user


def cli_credential(name: str | None, user: Any) -> Any:
    """The stored Hub token named by --credential (of --user when given). Without a name and a user: the one
    default token, when only one user has marked one (with a user, the services pick that user's default)."""
    from models_app.models import HubCredential

    if not name:
        if user is None:
            # Run by whoever administers this machine.
            defaults = list(HubCredential.objects.filter(is_default=True)[:2])
            return defaults[0] if len(defaults) == 1 else None
        return None
    found = list(HubCredential.objects.filter(name=name, **({"owner": user} if user else {}))[:2])
    if not found:
        raise CommandError(f"credential_not_found: no stored Hub token named {name!r}.")
    if len(found) > 1:
        raise CommandError(f"Several users have a token named {name!r}: add --user.")
    return found[0]
