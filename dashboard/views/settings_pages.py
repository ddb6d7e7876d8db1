"""Settings: the user's Hub tokens, API keys and default generation settings.

Secrets: a Hub token is write-only here (a password field; the page only ever shows hf_****abcd). A new API
key is shown once, on the page right after its creation, from the session, then forgotten."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from dashboard.forms import ApiKeyForm, CredentialForm, GenerationDefaultsForm
from models_app.models import ApiKey, HubCredential, UserPreferences
from models_app.services import apikeys, credentials

NEW_KEY_SESSION = "new_api_key"


def _render(request: HttpRequest, *, status: int = 200, **forms: Any) -> HttpResponse:
    user = request.user
    context = {
        "credentials": HubCredential.objects.filter(owner=user).order_by("name"),
        "keys": apikeys.list_apikeys(user=user),
        "credential_form": forms.get("credential_form") or CredentialForm(owner=user),
        "key_form": forms.get("key_form") or ApiKeyForm(),
        "defaults_form": forms.get("defaults_form")
        or GenerationDefaultsForm(initial=UserPreferences.generation_defaults(user)),
    }
    return render(request, "dashboard/settings.html", context, status=status)


@login_required
def settings_page(request: HttpRequest) -> HttpResponse:
    return _render(request)


@login_required
@require_POST
def credential_add(request: HttpRequest) -> HttpResponse:
    form = CredentialForm(request.POST, owner=request.user)
    if form.is_valid():
        try:
            credential = credentials.create_credential(
                owner=request.user, name=form.cleaned_data["name"], token=form.cleaned_data["token"]
            )
        except credentials.CredentialError as err:
            form.add_error("token", str(err))
        else:
            _report_test(request, credential, credentials.check_credential(credential))
            return redirect("/settings/#credentials")
    return _render(request, credential_form=form, status=400)


def _report_test(request: HttpRequest, credential: HubCredential, result: dict[str, Any]) -> None:
    if result["ok"]:
        messages.success(request, f"Token “{credential.name}” works: Hub user {result['username']}.")
    else:
        messages.error(request, f"Token “{credential.name}”: {result['error']}")


@login_required
@require_POST
def credential_test(request: HttpRequest, pk: int) -> HttpResponse:
    credential = get_object_or_404(HubCredential, pk=pk, owner=request.user)
    _report_test(request, credential, credentials.check_credential(credential))
    return redirect("/settings/#credentials")


@login_required
@require_POST
def credential_default(request: HttpRequest, pk: int) -> HttpResponse:
    """Make the token the default (the one pulls that name none use), or with default=0 stop using it so."""
    credential = get_object_or_404(HubCredential, pk=pk, owner=request.user)
    make = request.POST.get("default", "1") != "0"
    credentials.set_default_credential(credential, default=make)
    if make:
        messages.success(request, f"Pulls that name no token now use {credentials.label(credential)}.")
    else:
        messages.success(request, "Pulls that name no token now send none (public models need none).")
    return redirect("/settings/#credentials")


@login_required
@require_POST
def credential_delete(request: HttpRequest, pk: int) -> HttpResponse:
    credential = get_object_or_404(HubCredential, pk=pk, owner=request.user)
    credential.delete()
    messages.success(request, f"Removed the token “{credential.name}”.")
    return redirect("/settings/#credentials")


@login_required
@require_POST
def apikey_create(request: HttpRequest) -> HttpResponse:
    form = ApiKeyForm(request.POST)
    if form.is_valid():
        try:
            key, raw = apikeys.create_apikey(user=request.user, name=form.cleaned_data["name"])
        except apikeys.ApiKeyError as err:
            form.add_error("name", str(err))
        else:
            # Through the session to a GET page: a reload of that page, or the back button, never shows it again.
            request.session[NEW_KEY_SESSION] = {"id": key.id, "raw": raw}
            return redirect("apikey_created")
    return _render(request, key_form=form, status=400)


@never_cache
@login_required
def apikey_created(request: HttpRequest) -> HttpResponse:
    new = request.session.pop(NEW_KEY_SESSION, None)
    if not new:
        messages.info(request, "A key is shown only once, right after it is created.")
        return redirect("/settings/#api-keys")
    key = get_object_or_404(ApiKey, pk=new["id"], user=request.user)
    return render(request, "dashboard/apikey_created.html", {"key": key, "raw": new["raw"]})


@login_required
@require_POST
def apikey_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    apikeys.revoke_apikey(key)
    messages.success(request, f"Revoked the key “{key.name}” ({key.display}).")
    return redirect("/settings/#api-keys")


@login_required
@require_POST
def defaults_save(request: HttpRequest) -> HttpResponse:
    form = GenerationDefaultsForm(request.POST)
    if not form.is_valid():
        return _render(request, defaults_form=form, status=400)
    UserPreferences.set_generation_defaults(request.user, form.cleaned_data)
    messages.success(request, "Saved your default generation settings.")
    return redirect("/settings/#defaults")
