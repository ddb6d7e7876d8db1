"""A user sees only public models and their own private ones, their own credentials, keys and downloads;
staff see every model and download (never another user's secrets)."""

from __future__ import annotations

import pytest

from models_app.models import ApiKey, DownloadJob
from models_app.services.credentials import create_credential
from tests.factories import make_job, make_snapshot


@pytest.fixture
def bobs_things(bob):  # type: ignore[no-untyped-def]
    private = make_snapshot("bob/secret-model", owner=bob, private=True)
    gated = make_snapshot("bob/gated-model", owner=bob, gated=True)
    public = make_snapshot("org/public-model", owner=bob)
    job = make_job(private, user=bob, state=DownloadJob.State.FAILED, error_message="bob's failure")
    create_credential(owner=bob, name="bob-token", token="hf_bobsecrettoken9876")
    ApiKey.issue(user=bob, name="bobs-laptop")
    return {"private": private, "gated": gated, "public": public, "job": job}


def test_alice_does_not_see_bobs_private_or_gated_models(alice_client, bobs_things) -> None:
    html = alice_client.get("/models/").content.decode()
    assert "org/public-model" in html
    assert "bob/secret-model" not in html
    assert "bob/gated-model" not in html
    assert alice_client.get(f"/models/{bobs_things['private'].id}/").status_code == 404
    assert alice_client.get(f"/models/{bobs_things['private'].id}/delete/").status_code == 404
    assert alice_client.post(f"/models/{bobs_things['private'].id}/verify/").status_code == 404
    assert alice_client.get(f"/models/{bobs_things['public'].id}/").status_code == 200


def test_alice_does_not_see_bobs_downloads(alice_client, bobs_things) -> None:
    html = alice_client.get("/downloads/").content.decode()
    assert "bob/secret-model" not in html
    assert "bob&#x27;s failure" not in html and "bob's failure" not in html
    assert alice_client.post(f"/downloads/{bobs_things['job'].id}/cancel/").status_code == 404
    assert alice_client.post(f"/downloads/{bobs_things['job'].id}/retry/").status_code == 404


def test_alice_does_not_see_bobs_credentials_or_keys(alice_client, bobs_things) -> None:
    html = alice_client.get("/settings/").content.decode()
    assert "bob-token" not in html
    assert "bobs-laptop" not in html
    from models_app.models import HubCredential

    credential = HubCredential.objects.get(name="bob-token")
    key = ApiKey.objects.get(name="bobs-laptop")
    assert alice_client.post(f"/settings/credentials/{credential.id}/delete/").status_code == 404
    assert alice_client.post(f"/settings/credentials/{credential.id}/test/").status_code == 404
    assert alice_client.post(f"/settings/keys/{key.id}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.is_active
    assert HubCredential.objects.filter(id=credential.id).exists()


def test_alice_cannot_pull_with_bobs_credential(alice_client, bobs_things) -> None:
    from models_app.models import HubCredential

    credential = HubCredential.objects.get(name="bob-token")
    response = alice_client.post(
        "/pull/", {"repo": "org/anything", "revision": "main", "credential": credential.id, "action": "start"}
    )
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not DownloadJob.objects.filter(repository__repo_id="org/anything").exists()


def test_alice_usage_is_only_her_own(alice_client, alice, bob, bobs_things) -> None:
    from models_app.models import Usage

    Usage.objects.create(
        user=bob, snapshot=bobs_things["private"], source="browser", completion_tokens=777777
    )
    Usage.objects.create(user=alice, snapshot=bobs_things["public"], source="browser", completion_tokens=5)
    html = alice_client.get("/usage/").content.decode()
    assert "777,777" not in html and "777777" not in html
    assert "bob/secret-model" not in html
    assert "By user" not in html


def test_staff_see_every_model_and_download(client, staff, bobs_things) -> None:
    client.force_login(staff)
    html = client.get("/models/").content.decode()
    assert "bob/secret-model" in html and "bob/gated-model" in html
    assert client.get(f"/models/{bobs_things['private'].id}/").status_code == 200
    downloads = client.get("/downloads/").content.decode()
    assert "bob/secret-model" in downloads and "by bob" in downloads
    # ...but never someone else's secrets.
    settings_html = client.get("/settings/").content.decode()
    assert "bob-token" not in settings_html and "bobs-laptop" not in settings_html


def test_staff_see_usage_by_user(client, staff, bob, bobs_things) -> None:
    from models_app.models import Usage

    Usage.objects.create(user=bob, snapshot=bobs_things["private"], source="api", completion_tokens=4321)
    client.force_login(staff)
    html = client.get("/usage/").content.decode()
    assert "By user" in html and ">bob</a>" in html and 'href="?days=14&amp;user=bob"' in html


def test_staff_narrow_the_usage_page_to_one_user_and_nobody_else_can(  # type: ignore[no-untyped-def]
    alice_client, staff, alice, bob, bobs_things
) -> None:
    from django.test import Client

    from models_app.models import Usage

    client = Client()  # alice_client is the test's `client`, logged in as alice

    Usage.objects.create(user=bob, snapshot=bobs_things["private"], source="api", completion_tokens=4321)
    Usage.objects.create(user=alice, snapshot=bobs_things["public"], source="browser", completion_tokens=55)
    client.force_login(staff)
    html = client.get("/usage/?days=30&user=bob").content.decode()
    assert "bob's, last 30 days" in html and "4,321" in html and "bob/secret-model" in html
    assert ">55<" not in html and ">alice<" not in html
    assert 'href="?days=7&amp;user=bob"' in html  # the period links keep the filter
    assert client.get("/usage/?user=nobody").status_code == 404
    # For anyone else the parameter does nothing: still only their own usage.
    mine = alice_client.get("/usage/?user=bob").content.decode()
    assert "yours, last 14 days" in mine and "4,321" not in mine and "bob/secret-model" not in mine
