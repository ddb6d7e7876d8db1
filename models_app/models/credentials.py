"""Secrets at rest: Hub tokens (encrypted, Fernet) and API keys (hashed)."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from models_app.services.catalog import CatalogQuerySet


class HubCredential(models.Model):
    """A Hugging Face token. Only the ciphertext is stored; the plaintext exists only inside the task that
    uses it (models_app.services.credentials)."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="hub_credentials"
    )
    token_ciphertext = models.TextField(editable=False)
    token_last4 = models.CharField(max_length=4, editable=False)
    hub_username = models.CharField(max_length=200, blank=True)
    whoami = models.JSONField(default=dict, blank=True, help_text="whoami-v2 without any token field")
    last_verified_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    is_default = models.BooleanField(
        default=False, help_text="Used by the owner's pulls that name no token (one per owner)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner", "name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="unique_credential_name_per_owner"),
            models.UniqueConstraint(
                fields=["owner"], condition=Q(is_default=True), name="one_default_credential_per_owner"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"hf_****{self.token_last4}"


class ApiKeyQuerySet(CatalogQuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """`Authorization: Bearer mlxcr_<prefix>_<secret>`. Only a sha256 of the whole key is stored: keys are
    long random strings, so a slow hash adds nothing but latency on every request."""

    PREFIX = "mlxcr_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.PREFIX}{self.prefix}_…)"

    @staticmethod
    def hash(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @classmethod
    def issue(cls, *, user, name: str) -> tuple[ApiKey, str]:  # type: ignore[no-untyped-def]
        """Create a key; the raw key is returned once and never stored."""
        prefix = secrets.token_hex(4)
        raw = f"{cls.PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
        key = cls.objects.create(user=user, name=name, prefix=prefix, key_hash=cls.hash(raw))
        return key, raw

    @property
    def display(self) -> str:
        return f"{self.PREFIX}{self.prefix}_…"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])
