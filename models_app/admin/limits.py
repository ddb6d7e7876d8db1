"""Per-user limits: staff raise or lower one user's requests in flight and API keys here."""

from __future__ import annotations

from django.contrib import admin

from models_app.models import UserLimits


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):
    list_display = ["user", "max_in_flight", "max_api_keys", "updated_at"]
    search_fields = ["user__username"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    readonly_fields = ["updated_at"]
