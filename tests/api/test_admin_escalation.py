"""Issue 11 item 6: a staff user granted only "Can add api key" (or "Can add hub credential") must not mint a
key or a credential for someone else, the superuser above all: through the real admin pages."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from models_app.models import ApiKey, HubCredential
from models_app.services import credentials
from tests.api.conftest import KeyClient

pytestmark = pytest.mark.django_db

TOKEN = "hf_EscalationToken0000000001"


@pytest.fixture
def clerk(django_user_model):  # type: ignore[no-untyped-def]
    """Staff, not superuser, with add/view permission on keys and credentials only."""
    user = django_user_model.objects.create_user(
        "clerk", "clerk@example.com", "clerk-password", is_staff=True
    )
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="models_app",
            codename__in=["add_apikey", "view_apikey", "add_hubcredential", "view_hubcredential"],
        )
    )
    return user


@pytest.fixture
def clerk_client(clerk) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(clerk)
    return client


def test_a_staff_user_cannot_mint_a_key_for_the_superuser_and_act_as_him(clerk_client, clerk, staff) -> None:  # type: ignore[no-untyped-def]
    response = clerk_client.post("/admin/models_app/apikey/add/", {"user": staff.pk, "name": "root-now"})
    # The form refuses the choice (the page comes back with an error): no key exists for root, none is shown.
    assert response.status_code == 200
    assert '<code id="raw-key">' not in response.content.decode()
    assert not ApiKey.objects.filter(user=staff).exists()
    assert not ApiKey.objects.filter(name="root-now").exists()

    # The form offers the clerk alone.
    form = clerk_client.get("/admin/models_app/apikey/add/").content.decode()
    assert f'value="{clerk.pk}"' in form and f'value="{staff.pk}"' not in form

    # A key for himself works, and acts as him, not as anyone else.
    mine = clerk_client.post("/admin/models_app/apikey/add/", {"user": clerk.pk, "name": "mine"})
    raw = mine.content.decode().split('<code id="raw-key">', 1)[1].split("</code>", 1)[0]
    assert ApiKey.objects.get(key_hash=ApiKey.hash(raw)).user == clerk
    keys = KeyClient(raw).get("/api/v1/keys").json()
    assert [k["name"] for k in keys["results"]] == ["mine"]


def test_a_staff_user_sees_only_his_own_keys_and_credentials_in_the_admin(clerk_client, clerk, staff) -> None:  # type: ignore[no-untyped-def]
    root_key, _ = ApiKey.issue(user=staff, name="root-ci")
    root_credential = credentials.create_credential(owner=staff, name="root-hub", token=TOKEN)
    assert "root-ci" not in clerk_client.get("/admin/models_app/apikey/").content.decode()
    assert clerk_client.get(f"/admin/models_app/apikey/{root_key.pk}/change/").status_code == 302
    assert "root-hub" not in clerk_client.get("/admin/models_app/hubcredential/").content.decode()
    change = clerk_client.get(f"/admin/models_app/hubcredential/{root_credential.pk}/change/")
    assert change.status_code == 302  # the admin's "does not exist" redirect


def test_a_staff_user_cannot_store_a_hub_credential_for_someone_else(clerk_client, clerk, staff) -> None:  # type: ignore[no-untyped-def]
    response = clerk_client.post(
        "/admin/models_app/hubcredential/add/", {"owner": staff.pk, "name": "planted", "token": TOKEN}
    )
    assert response.status_code == 200
    assert not HubCredential.objects.filter(owner=staff).exists()

    mine = clerk_client.post(
        "/admin/models_app/hubcredential/add/", {"owner": clerk.pk, "name": "mine", "token": TOKEN}
    )
    assert mine.status_code == 302
    assert HubCredential.objects.get(name="mine").owner == clerk


def test_a_superuser_still_mints_keys_and_credentials_for_others(client, staff, alice) -> None:  # type: ignore[no-untyped-def]
    client.force_login(staff)
    response = client.post("/admin/models_app/apikey/add/", {"user": alice.pk, "name": "for-alice"})
    assert response.status_code == 200 and ApiKey.objects.get(name="for-alice").user == alice
    response = client.post(
        "/admin/models_app/hubcredential/add/", {"owner": alice.pk, "name": "alice-hub", "token": TOKEN}
    )
    assert response.status_code == 302 and HubCredential.objects.get(name="alice-hub").owner == alice
