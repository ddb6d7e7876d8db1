"""API keys: issue, list and revoke. The raw key exists only in the return value of `apikey_create`;
the database keeps a sha256 of it (ApiKey.issue)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from models_app.models import ApiKey

NAME_MAX_LENGTH = ApiKey._meta.get_field("name").max_length


class ApiKeyError(ValueError):
    """A request about keys that cannot be honoured (bad name, unknown prefix)."""


def apikey_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiKey, str]:
    """Issue a key for `user`. Returns the row and the raw key, which the caller shows once."""
    name = (name or "").strip()
    if not name:
        raise ApiKeyError("A key needs a name, e.g. the tool or machine that will use it.")
    if len(name) > NAME_MAX_LENGTH:
        raise ApiKeyError(f"A key name is at most {NAME_MAX_LENGTH} characters.")
    return ApiKey.issue(user=user, name=name)


def apikey_list(*, user: AbstractBaseUser | None = None, include_revoked: bool = True) -> QuerySet[ApiKey]:
    """Keys of `user` (every user's when None), newest first."""
    keys = ApiKey.objects.select_related("user")
    if user is not None:
        keys = keys.filter(user=user)
    if not include_revoked:
        keys = keys.active()
    return keys.order_by("-created_at", "-id")


def apikey_revoke(key: ApiKey) -> ApiKey:
    """Revoke a key; idempotent, so a revoked key keeps its first revocation time. Authentication reads
    the row on every request, so the key stops working at once."""
    if key.is_active:
        key.revoke()
    return key


def apikey_find(prefix: str) -> ApiKey:
    """The key with this prefix; accepts the bare prefix or the displayed form `mlxcr_<prefix>_…`."""
    prefix = prefix.strip().removeprefix(ApiKey.PREFIX).split("_", 1)[0].rstrip("…")
    try:
        return ApiKey.objects.select_related("user").get(prefix=prefix)
    except ApiKey.DoesNotExist:
        raise ApiKeyError(f"No API key with prefix {prefix!r}.") from None
