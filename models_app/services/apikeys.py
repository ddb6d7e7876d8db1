"""API keys: issue, list and revoke. The raw key exists only in the return value of `create_apikey`;
the database keeps a sha256 of it (ApiKey.issue)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet

from models_app.models import ApiKey, UserLimits

NAME_MAX_LENGTH = ApiKey._meta.get_field("name").max_length


class ApiKeyError(ValueError):
    """A request about keys that cannot be honoured (bad name, unknown prefix)."""

    code = "invalid"


class TooManyKeys(ApiKeyError):
    code = "too_many_keys"


def create_apikey(*, user: AbstractBaseUser, name: str) -> tuple[ApiKey, str]:
    """Issue a key for `user`. Returns the row and the raw key, which the caller shows once."""
    name = (name or "").strip()
    if not name:
        raise ApiKeyError("A key needs a name, e.g. the tool or machine that will use it.")
    if len(name) > NAME_MAX_LENGTH:
        raise ApiKeyError(f"A key name is at most {NAME_MAX_LENGTH} characters.")
    with transaction.atomic():
        # The user's row, locked: two requests at once cannot both take the last key (PostgreSQL; SQLite
        # serialises writers anyway).
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        check_key_cap(user)
        return ApiKey.issue(user=user, name=name)


def check_key_cap(user: AbstractBaseUser) -> None:
    """Raise ApiKeyError when the user already holds their maximum of active keys (API_MAX_KEYS_PER_USER or
    their limit in the admin's "User limits"): every key is one more allowance of requests in flight."""
    _, cap = UserLimits.for_user(user.pk)
    if cap and ApiKey.objects.active().filter(user=user).count() >= cap:
        raise TooManyKeys(
            f"This account already has {cap} active API keys, the most allowed; revoke one it no longer uses."
        )


def list_apikeys(*, user: AbstractBaseUser | None = None, include_revoked: bool = True) -> QuerySet[ApiKey]:
    """Keys of `user` (every user's when None), newest first."""
    keys = ApiKey.objects.select_related("user")
    if user is not None:
        keys = keys.filter(user=user)
    if not include_revoked:
        keys = keys.active()
    return keys.order_by("-created_at", "-id")


def revoke_apikey(key: ApiKey) -> ApiKey:
    """Revoke a key; idempotent, so a revoked key keeps its first revocation time. Authentication reads
    the row on every request, so the key stops working at once."""
    if key.is_active:
        key.revoke()
    return key


def find_apikey(prefix: str) -> ApiKey:
    """The key with this prefix; accepts the bare prefix or the displayed form `mlxcr_<prefix>_…`."""
    prefix = prefix.strip().removeprefix(ApiKey.PREFIX).split("_", 1)[0].rstrip("…")
    try:
        return ApiKey.objects.select_related("user").get(prefix=prefix)
    except ApiKey.DoesNotExist:
        raise ApiKeyError(f"No API key with prefix {prefix!r}.") from None
