"""Personal secrets in the admin: an API key acts as its user and a Hub credential reads the Hub as its owner,
so a staff user who could mint one for someone else could act as them (the superuser above all). Only
superusers manage other people's; everyone else sees, adds and changes their own."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest


class OwnRowsUnlessSuperuser(admin.ModelAdmin):
    owner_field: str = "user"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows = super().get_queryset(request)
        if request.user.is_superuser:
            return rows
        return rows.filter(**{self.owner_field: request.user})

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == self.owner_field and not request.user.is_superuser:
            kwargs["queryset"] = db_field.related_model.objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def check_owner(self, request: HttpRequest, obj: Model, form: forms.ModelForm) -> None:
        """The form's choices already hold only the user; this is the rule itself, for any other path."""
        owner_id = getattr(obj, f"{self.owner_field}_id", None)
        if not request.user.is_superuser and owner_id != request.user.pk:
            raise PermissionDenied("Only a superuser can create or change this for another user.")
