"""Per-user preferences: the default generation settings a new chat starts with."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from models_app.services.inference import DEFAULT_GENERATION


class UserPreferences(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preferences"
    )
    generation = models.JSONField(
        default=dict, blank=True, help_text="temperature, top_p, max_tokens, system_prompt"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "user preferences"

    def __str__(self) -> str:
        return f"preferences of {self.user}"

    @classmethod
    def generation_defaults(cls, user) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        """The user's defaults over the built-in ones (keys they never saved keep the built-in value).
        A new chat starts from these."""
        saved = cls.objects.filter(user=user).values_list("generation", flat=True).first() or {}
        return {**DEFAULT_GENERATION, **{k: v for k, v in saved.items() if k in DEFAULT_GENERATION}}

    @classmethod
    def set_generation_defaults(cls, user, values: dict[str, Any]) -> UserPreferences:  # type: ignore[no-untyped-def]
        generation = {k: values[k] for k in DEFAULT_GENERATION if k in values}
        prefs, _ = cls.objects.update_or_create(user=user, defaults={"generation": generation})
        return prefs
