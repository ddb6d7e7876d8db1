"""API key admin. The hash is never shown; a key created here is shown once, in the response to the add form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.urls import reverse

from models_app.admin.ownership import OwnRowsUnlessSuperuser
from models_app.models import ApiKey
from models_app.services import apikeys


class ApiKeyCreationForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["user", "name"]

    def clean_user(self):  # type: ignore[no-untyped-def]
        user = self.cleaned_data["user"]
        try:
            apikeys.check_key_cap(user)
        except apikeys.ApiKeyError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return user


_KEY_CREATED = """{% extends "admin/base_site.html" %}
{% block content %}
<p>API key <strong>{{ key.name }}</strong> for <strong>{{ key.user }}</strong>:</p>
<p><code id="raw-key">{{ raw_key }}</code></p>
<p>Copy it now: it is not shown again, and only a hash of it is stored.</p>
<p><a href="{{ changelist_url }}">Back to API keys</a></p>
{% endblock %}"""


@admin.register(ApiKey)
class ApiKeyAdmin(OwnRowsUnlessSuperuser):
    list_display = ["name", "user", "key_display", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    actions = ["revoke_keys"]
    # key_hash is deliberately absent from every list here.
    readonly_fields = ["key_display", "created_at", "last_used_at", "revoked_at"]
    fields = ["user", "name", "key_display", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="Key", ordering="prefix")
    def key_display(self, obj: ApiKey) -> str:
        return obj.display if obj.pk else "Shown once, after you save."

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any):  # type: ignore[no-untyped-def]
        if obj is None:
            kwargs["form"] = ApiKeyCreationForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        return ["user", "name"] if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        # A key's owner never changes: moving it would hand one user's access to another.
        return self.readonly_fields if obj is None else ["user", *self.readonly_fields]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        self.check_owner(request, obj, form)
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = apikeys.create_apikey(user=form.cleaned_data["user"], name=form.cleaned_data["name"])
        # The admin logs the addition and builds links from obj: point it at the new row.
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = key.pk, key.prefix, key.key_hash, key.created_at
        obj._state.adding = False
        obj._raw_key = raw  # type: ignore[attr-defined]  # for response_add only, never stored

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        """Show the raw key in this response, instead of the usual redirect with a message: a message would
        sit in a cookie or the session table until displayed."""
        raw = getattr(obj, "_raw_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "key": obj,
            "raw_key": raw,
            "opts": self.opts,
            "changelist_url": reverse("admin:models_app_apikey_changelist"),
        }
        response = HttpResponse(engines["django"].from_string(_KEY_CREATED).render(context, request))
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            apikeys.revoke_apikey(key)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)
