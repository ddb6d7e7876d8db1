"""Hub tokens at rest: encrypted with Fernet keys from the environment (first key encrypts, every key
decrypts, so keys rotate without downtime). The plaintext exists only inside the service call that needs it
and is passed to huggingface_hub explicitly; it is never logged, queued, published or stored in clear."""

from __future__ import annotations

import logging
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from models_app.models import HubCredential
from models_app.redaction import redact

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 500


class CredentialError(Exception):
    """A token that cannot be stored or read (bad input, or no key decrypts it)."""


def _fernet() -> MultiFernet:
    keys = settings.CREDENTIALS_KEYS
    if not keys:
        raise CredentialError("No CREDENTIALS_KEY is configured.")
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(token: str) -> str:
    return _fernet().encrypt(token.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        # Never include the ciphertext: with a leaked old key it is the token.
        raise CredentialError("No configured CREDENTIALS_KEY decrypts this credential.") from exc


def normalize_token(token: str) -> str:
    """The token stripped of surrounding whitespace; CredentialError if it cannot be a token."""
    if not isinstance(token, str):
        raise CredentialError("The token must be a string.")
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii() or not token.isprintable():
        raise CredentialError("That does not look like a Hugging Face token.")
    if any(c.isspace() for c in token):
        raise CredentialError("A token has no spaces in it.")
    return token


def create_credential(*, owner, name: str, token: str) -> HubCredential:  # type: ignore[no-untyped-def]
    """Store a token for `owner`: only the ciphertext and the last 4 characters are kept. A user's first
    token becomes their default: someone who adds one token means their pulls to use it."""
    token = normalize_token(token)
    first = not HubCredential.objects.filter(owner=owner).exists()
    return HubCredential.objects.create(
        owner=owner,
        name=name.strip()[:100],
        token_ciphertext=encrypt(token),
        token_last4=token[-4:],
        is_default=first,
    )


def set_default_credential(credential: HubCredential, *, default: bool = True) -> HubCredential:
    """Make this the owner's default token (the one pulls that name none use), or unset it."""
    with transaction.atomic():
        if default:
            HubCredential.objects.filter(owner_id=credential.owner_id, is_default=True).exclude(
                pk=credential.pk
            ).update(is_default=False)
        HubCredential.objects.filter(pk=credential.pk).update(is_default=default)
    credential.is_default = default
    return credential


def default_credential(user) -> HubCredential | None:  # type: ignore[no-untyped-def]
    """The token a pull by `user` that names none uses: the one they marked default."""
    if getattr(user, "pk", None) is None:
        return None
    return HubCredential.objects.filter(owner=user, is_default=True).first()


def search_credentials(user) -> list[HubCredential]:  # type: ignore[no-untyped-def]
    """Every token `user` stored, the default first (then by name): Discover lists with the first and adds the
    private repos each of the others can read."""
    if getattr(user, "pk", None) is None:
        return []
    return list(HubCredential.objects.filter(owner=user).order_by("-is_default", "name", "pk"))


def label(credential: HubCredential) -> str:
    """How a token is named to people: its name and masked form, never the token."""
    return f"“{credential.name}” ({credential.masked})"


def selection_hint(repo_id: str, *, user_id: int | None, used_id: int | None) -> str:
    """For an auth failure: which token the pull sent, the user's stored tokens (by name and masked form)
    and how to pick one, or how to add one when there are none."""
    stored = list(HubCredential.objects.filter(owner_id=user_id).order_by("name")) if user_id else []
    used = next((c for c in stored if c.pk == used_id), None) if used_id else None
    sent = f"The pull used the token {label(used)}." if used else "The pull sent no token."
    if not stored:
        return f"Add a Hugging Face token that can read {repo_id} in Settings (Hub tokens), then pull again."
    names = ", ".join(label(c) + (" default" if c.is_default else "") for c in stored)
    return (
        f"{sent} Your stored tokens: {names}. Pick one that can read {repo_id} for the pull (the Hub token "
        "field of the Pull page, pull --credential NAME, or credential_id in the API), or mark it default in "
        "Settings ('Not default' there makes pulls send no token); on the Hub, check that its account may "
        "read the repository."
    )


def set_credential_token(credential: HubCredential, *, token: str) -> HubCredential:
    """Replace the token of an existing credential (its verification is reset)."""
    token = normalize_token(token)
    credential.token_ciphertext = encrypt(token)
    credential.token_last4 = token[-4:]
    credential.hub_username = ""
    credential.whoami = {}
    credential.last_verified_at = None
    credential.last_error = ""
    credential.save(
        update_fields=[
            "token_ciphertext",
            "token_last4",
            "hub_username",
            "whoami",
            "last_verified_at",
            "last_error",
        ]
    )
    return credential


def credential_token(credential: HubCredential) -> str:
    """The plaintext token. Call it only where huggingface_hub needs it, and pass it as `token=`."""
    return decrypt(credential.token_ciphertext)


def _without_tokens(data: Any, token: str) -> Any:
    """whoami-v2 minus anything that is, or describes, a token."""
    if isinstance(data, dict):
        return {
            k: _without_tokens(v, token)
            for k, v in data.items()
            if not any(word in str(k).lower() for word in ("token", "secret", "password"))
        }
    if isinstance(data, list):
        return [_without_tokens(v, token) for v in data]
    if isinstance(data, str):
        return redact(data.replace(token, "[redacted]")) if token else redact(data)
    return data


def check_credential(credential: HubCredential) -> dict[str, Any]:
    """Ask the Hub who the token belongs to; store the username and the (token-free) answer.

    Returns {"ok": bool, "username": str, "error": str}."""
    from huggingface_hub import HfApi

    try:
        token = credential_token(credential)
    except CredentialError as exc:
        credential.last_error = str(exc)[:300]
        credential.save(update_fields=["last_error"])
        return {"ok": False, "username": "", "error": credential.last_error}
    from models_app.services.hub_progress import install_http_guard

    install_http_guard()
    try:
        info = HfApi(endpoint=settings.HF_ENDPOINT).whoami(token=token)
    except Exception as exc:  # any failure is shown to the owner, never raised into a page
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            message = "The Hub refused this token (invalid or revoked)."
        else:
            message = f"Could not check the token with {settings.HF_ENDPOINT}: {type(exc).__name__}."
        credential.last_error = redact(message.replace(token, "[redacted]"))[:300]
        credential.save(update_fields=["last_error"])
        log.info("credential %s check failed: %s", credential.pk, credential.last_error)
        return {"ok": False, "username": "", "error": credential.last_error}
    clean = _without_tokens(info, token)
    credential.hub_username = str(clean.get("name", ""))[:200]
    credential.whoami = clean
    credential.last_verified_at = timezone.now()
    credential.last_error = ""
    credential.save(update_fields=["hub_username", "whoami", "last_verified_at", "last_error"])
    return {"ok": True, "username": credential.hub_username, "error": ""}


def rotate_credentials() -> int:
    """Re-encrypt every stored token with the primary (first) key; returns how many rows changed.

    Run after putting a new key first in CREDENTIALS_KEY; then the old key can be removed."""
    fernet = _fernet()
    changed = 0
    with transaction.atomic():
        for credential in HubCredential.objects.select_for_update().only("id", "token_ciphertext"):
            try:
                rotated = fernet.rotate(credential.token_ciphertext.encode()).decode()
            except InvalidToken:
                log.warning("credential %s: no configured key decrypts it; left as is", credential.pk)
                continue
            credential.token_ciphertext = rotated
            credential.save(update_fields=["token_ciphertext"])
            changed += 1
    return changed
