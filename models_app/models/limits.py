"""Per-user limits staff may adjust (the admin's "User limits"): empty fields fall back to the settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from models_app.services.catalog import CatalogQuerySet


class UserLimits(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits")
    max_in_flight = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Generations this user may have queued or running at once, chat page and API together "
        "(0: no limit). Empty: INFERENCE_MAX_IN_FLIGHT_PER_USER.",
    )
    max_api_keys = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Active API keys this user may hold (0: no limit). Empty: API_MAX_KEYS_PER_USER.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = CatalogQuerySet.as_manager()

    class Meta:
        verbose_name = "user limits"
        verbose_name_plural = "user limits"

    def __str__(self) -> str:
        return f"limits of {self.user}"

    @classmethod
    def for_user(cls, user_id: int) -> tuple[int, int]:
        """(max_in_flight, max_api_keys) for a user: the override, else the setting; 0 means no limit."""
        row = cls.objects.filter(user_id=user_id).values_list("max_in_flight", "max_api_keys").first()
        return cls._with_defaults(*(row or (None, None)))

    @classmethod
    def of(cls, user: Any) -> tuple[int, int]:
        """As for_user, with no query of its own when the row came with the user (select_related("limits"),
        as an API key's user does on every API request)."""
        try:
            row = user.limits
        except cls.DoesNotExist:
            return cls._with_defaults(None, None)
        return cls._with_defaults(row.max_in_flight, row.max_api_keys)

    @staticmethod
    def _with_defaults(in_flight: int | None, keys: int | None) -> tuple[int, int]:
        return (
            settings.INFERENCE_MAX_IN_FLIGHT_PER_USER if in_flight is None else in_flight,
            settings.API_MAX_KEYS_PER_USER if keys is None else keys,
        )
