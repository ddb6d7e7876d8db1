"""/api/v1/credentials: Hub tokens are write-only. They go in once and never come out, in any response."""

from __future__ import annotations

import pytest

from models_app.models import HubCredential
from tests.api.conftest import KeyClient, error_of

pytestmark = pytest.mark.django_db

TOKEN = "hf_TestTokenAbcdefghijklmnopqrstuvWXYZ"


def test_the_token_is_write_only(alice_api: KeyClient, hub, alice) -> None:  # type: ignore[no-untyped-def]
    hub.add_token(TOKEN, "alice-on-the-hub")
    responses = []

    created = alice_api.post(
        "/api/v1/credentials", {"name": "laptop", "token": TOKEN}, content_type="application/json"
    )
    responses.append(created)
    assert created.status_code == 201
    body = created.json()
    assert body["masked"] == "hf_****WXYZ" and "token" not in body
    credential = HubCredential.objects.get(pk=body["id"])
    assert credential.owner == alice and TOKEN not in credential.token_ciphertext

    responses.append(alice_api.get("/api/v1/credentials"))
    responses.append(alice_api.get(f"/api/v1/credentials/{body['id']}"))
    tested = alice_api.post(f"/api/v1/credentials/{body['id']}/test")
    responses.append(tested)
    assert tested.json()["ok"] is True and tested.json()["hub_username"] == "alice-on-the-hub"
    # Errors echo nothing either: a duplicate name, a malformed token.
    responses.append(
        alice_api.post(
            "/api/v1/credentials", {"name": "laptop", "token": TOKEN}, content_type="application/json"
        )
    )
    responses.append(
        alice_api.post(
            "/api/v1/credentials", {"name": "x", "token": TOKEN + " spaced"}, content_type="application/json"
        )
    )
    assert responses[-2].status_code == 409 and error_of(responses[-2])["code"] == "conflict"
    assert responses[-1].status_code == 400 and "token" in error_of(responses[-1])["details"]

    for response in responses:
        assert TOKEN not in response.content.decode(), response.content
        assert TOKEN[3:] not in response.content.decode()


def test_a_refused_token_is_reported_without_the_token(alice_api: KeyClient, hub) -> None:  # type: ignore[no-untyped-def]
    unknown = "hf_NeverIssuedByTheHub0123456789abcd"  # the local Hub is shared by the session: a fresh token
    created = alice_api.post(
        "/api/v1/credentials", {"name": "old", "token": unknown}, content_type="application/json"
    )
    tested = alice_api.post(f"/api/v1/credentials/{created.json()['id']}/test")
    assert tested.status_code == 200
    assert tested.json()["ok"] is False and "refused" in tested.json()["message"]
    assert unknown not in tested.content.decode()


def test_credentials_are_private_to_their_owner(
    alice_api: KeyClient, bob_api: KeyClient, staff_api: KeyClient
) -> None:
    created = alice_api.post(
        "/api/v1/credentials", {"name": "mine", "token": TOKEN}, content_type="application/json"
    )
    cid = created.json()["id"]
    for api in (bob_api, staff_api):
        assert api.get("/api/v1/credentials").json()["results"] == []
        assert api.get(f"/api/v1/credentials/{cid}").status_code == 404
        assert api.delete(f"/api/v1/credentials/{cid}").status_code == 404
        assert api.post(f"/api/v1/credentials/{cid}/test").status_code == 404

    assert alice_api.delete(f"/api/v1/credentials/{cid}").status_code == 204
    assert not HubCredential.objects.exists()


def test_a_credential_needs_a_name_and_a_token(alice_api: KeyClient) -> None:
    response = alice_api.post("/api/v1/credentials", {"name": "x"}, content_type="application/json")
    assert response.status_code == 400 and "token" in error_of(response)["details"]
