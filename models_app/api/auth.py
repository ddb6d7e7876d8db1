"""API keys as `Authorization: Bearer mlxcr_...`. A key acts as its user."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from models_app.models import ApiKey

# last_used_at is for humans ("used 2 minutes ago"): refreshing it once a minute spares a write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def authenticate_key(raw_key: str) -> ApiKey | None:
    """The active key for a raw key, or None. Also refreshes its last-used time."""
    key = active_key(raw_key)
    if key is not None:
        touch(key)
    return key


def active_key(raw_key: str) -> ApiKey | None:
    """The active key for a raw key (with its user and the user's limits), or None."""
    if not raw_key.startswith(ApiKey.PREFIX):
        return None
    # With the user's limits (UserLimits.of): the in-flight check after this needs no query of its own.
    key = ApiKey.objects.select_related("user", "user__limits").filter(key_hash=ApiKey.hash(raw_key)).first()
    if key is None or not key.is_active or not key.user.is_active:
        return None
    return key


def touch(key: ApiKey) -> None:
    """Refresh the key's last-used time, at most once a LAST_USED_RESOLUTION (the row and this instance)."""
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def bearer_token(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):  # type: ignore[no-untyped-def]
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        raw = bearer_token(header)
        if raw is None:
            return None
        key = authenticate_key(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")
        return key.user, key

    def authenticate_header(self, request) -> str:  # type: ignore[no-untyped-def]
        return self.keyword
