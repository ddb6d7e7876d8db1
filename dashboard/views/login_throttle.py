"""What django-axes calls when a login is refused for too many failures, and how it reads the client address.

Failures are counted per username and per client address (settings: AXES_LOCKOUT_PARAMETERS). The refusal
is the login page again, with the reason and when to retry, as 429: the same for the site's login form and
/admin/login/, and the same whether or not the username exists.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def client_address(request: HttpRequest) -> str | None:
    """REMOTE_ADDR only: headers such as X-Forwarded-For are the client's to forge. Behind a reverse proxy,
    uvicorn rewrites REMOTE_ADDR from the proxy's X-Forwarded-For when the proxy is in FORWARDED_ALLOW_IPS."""
    return request.META.get("REMOTE_ADDR")


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} seconds"
    minutes = round(seconds / 60)
    return f"{minutes} minutes" if minutes < 120 else f"{round(minutes / 60)} hours"


def lockout_message() -> str:
    return (
        "Too many failed logins for this account or from your address. "
        f"Try again in {_duration(settings.LOGIN_LOCKOUT_TIME)}."
    )


def locked_out(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    form = AuthenticationForm(request)
    context = {"form": form, "locked_out": lockout_message(), "next": request.POST.get("next", "")}
    return render(request, "registration/login.html", context, status=429)
