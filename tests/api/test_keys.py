"""API keys: stored hashed, shown once, revocable at once, acting as their user only."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import Client

from models_app.models import ApiKey
from tests.api.conftest import KeyClient, error_of

pytestmark = pytest.mark.django_db


def test_it_creates_a_key_and_shows_the_raw_key_once(alice_client: Client, alice) -> None:  # type: ignore[no-untyped-def]
    response = alice_client.post("/api/v1/keys", {"name": "laptop"}, content_type="application/json")

    assert response.status_code == 201
    body = response.json()
    raw = body["key"]
    assert raw.startswith(f"mlxcr_{body['prefix']}_") and body["name"] == "laptop" and body["active"]
    key = ApiKey.objects.get(pk=body["id"])
    assert key.user == alice
    assert key.key_hash == ApiKey.hash(raw) and raw not in key.key_hash  # only a hash is stored
    # Never again: neither the list nor the detail carries the raw key.
    listed = alice_client.get("/api/v1/keys").content.decode()
    detail = alice_client.get(f"/api/v1/keys/{key.pk}").content.decode()
    for text in (listed, detail):
        assert raw not in text and key.key_hash not in text and '"key"' not in text
    # And the new key works as alice.
    assert KeyClient(raw).get("/api/v1/keys").status_code == 200


def test_it_rejects_a_key_without_a_name(alice_api: KeyClient) -> None:
    response = alice_api.post("/api/v1/keys", {"name": ""}, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid"


def test_a_name_is_measured_as_sent_not_after_trimming(alice_api: KeyClient) -> None:
    """The schema's maxLength is about the string in the request; DRF trims before it measures."""
    too_long = alice_api.post("/api/v1/keys", {"name": " " + "k" * 100}, content_type="application/json")
    assert too_long.status_code == 400
    assert error_of(too_long)["details"]["name"] == ["Ensure this field has no more than 100 characters."]
    padded = alice_api.post("/api/v1/keys", {"name": "  laptop  "}, content_type="application/json")
    assert padded.status_code == 201 and padded.json()["name"] == "laptop"


def test_the_schemas_name_pattern_refuses_exactly_what_trimming_leaves_blank(alice_api: KeyClient) -> None:
    """The schema spells the spaces out: to an ECMA-style reader `\\s` misses U+0085 and U+001C-U+001F, which
    DRF's trimming removes, so such a name looked valid to schemathesis and was blank here."""
    import re

    from models_app.api.serializers import NAME_PATTERN

    spaces = [chr(i) for i in range(0x110000) if chr(i).isspace()]
    assert not any(re.match(NAME_PATTERN, space * 2) for space in spaces)
    assert re.match(NAME_PATTERN, "\x85laptop\u3000") and re.match(NAME_PATTERN, "\ufeff")
    for blank in ("\x85", "\x1c\x1f", "\u3000"):
        response = alice_api.post("/api/v1/keys", {"name": blank}, content_type="application/json")
        assert response.status_code == 400, repr(blank)


def test_a_revoked_key_is_refused_at_once(alice_api: KeyClient) -> None:
    me = alice_api.get("/api/v1/keys").json()["results"][0]
    assert alice_api.get("/api/v1/models").status_code == 200

    revoked = alice_api.delete(f"/api/v1/keys/{me['id']}")
    assert revoked.status_code == 200 and revoked.json()["active"] is False

    response = alice_api.get("/api/v1/models")
    assert response.status_code == 401
    assert error_of(response)["code"] == "authentication_failed"
    assert response["WWW-Authenticate"] == "Bearer"


def test_it_refuses_missing_malformed_and_unknown_keys(client: Client) -> None:
    assert error_of(client.get("/api/v1/models"))["code"] in ("not_authenticated", "authentication_failed")
    for header in ("Bearer mlxcr_nope_nope", "Bearer hf_somethingelse", "Bearer "):
        response = client.get("/api/v1/models", HTTP_AUTHORIZATION=header)
        assert response.status_code == 401, header
        error_of(response)


def test_a_key_sees_only_its_own_users_keys(alice_api: KeyClient, bob_api: KeyClient) -> None:
    bobs = bob_api.get("/api/v1/keys").json()["results"]
    assert [k["name"] for k in bobs] == ["bob-ci"]
    assert [k["name"] for k in alice_api.get("/api/v1/keys").json()["results"]] == ["alice-ci"]
    # Alice can neither read nor revoke Bob's key: it does not exist for her.
    assert alice_api.get(f"/api/v1/keys/{bobs[0]['id']}").status_code == 404
    assert alice_api.delete(f"/api/v1/keys/{bobs[0]['id']}").status_code == 404
    assert ApiKey.objects.get(pk=bobs[0]["id"]).is_active


def test_invalid_and_unknown_ids_have_the_error_shape(alice_api: KeyClient) -> None:
    for bad in ("abc", "0", "-1", "99999999999999999999999"):
        response = alice_api.get(f"/api/v1/keys/{bad}")
        assert response.status_code == 400, bad
        assert error_of(response)["code"] == "invalid_id"
    response = alice_api.get("/api/v1/keys/424242")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = alice_api.get("/api/v1/no-such-thing")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_session_requests_need_the_csrf_token(alice) -> None:  # type: ignore[no-untyped-def]
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.get("/api/v1/keys").status_code == 200
    response = browser.post("/api/v1/keys", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in error_of(response)["message"]


def test_the_command_creates_lists_and_revokes(alice) -> None:  # type: ignore[no-untyped-def]
    out, err = io.StringIO(), io.StringIO()
    call_command("apikey", "create", "--user", "alice", "--name", "ci", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    key = ApiKey.objects.get(key_hash=ApiKey.hash(raw))
    assert key.user == alice and key.name == "ci"
    assert "not shown again" in err.getvalue()

    listing = io.StringIO()
    call_command("apikey", "list", stdout=listing)
    assert key.prefix in listing.getvalue() and raw not in listing.getvalue()

    call_command("apikey", "revoke", key.display, stdout=io.StringIO())
    key.refresh_from_db()
    assert not key.is_active
    assert KeyClient(raw).get("/api/v1/keys").status_code == 401


def test_the_admin_shows_a_new_key_once_and_never_its_hash(client: Client, staff, alice) -> None:  # type: ignore[no-untyped-def]
    client.force_login(staff)
    response = client.post("/admin/models_app/apikey/add/", {"user": alice.pk, "name": "from-admin"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get(name="from-admin")
    page = response.content.decode()
    raw = page.split('<code id="raw-key">', 1)[1].split("</code>", 1)[0]
    assert ApiKey.hash(raw) == key.key_hash
    change = client.get(f"/admin/models_app/apikey/{key.pk}/change/").content.decode()
    listing = client.get("/admin/models_app/apikey/").content.decode()
    for text in (change, listing):
        assert key.key_hash not in text and raw not in text
    assert key.display in listing

    client.post(
        "/admin/models_app/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True
    )
    key.refresh_from_db()
    assert not key.is_active


def test_a_user_holds_at_most_the_cap_of_active_keys(client: Client, alice, staff, settings) -> None:  # type: ignore[no-untyped-def]
    """Keys were unlimited, and each had its own allowance of requests in flight. Now: API_MAX_KEYS_PER_USER
    active keys (revoked ones do not count), by every way of creating one; staff may set one user's cap."""
    settings.API_MAX_KEYS_PER_USER = 3
    client.force_login(alice)
    for i in range(3):
        assert (
            client.post("/api/v1/keys", {"name": f"k{i}"}, content_type="application/json").status_code == 201
        )
    refused = client.post("/api/v1/keys", {"name": "one too many"}, content_type="application/json")
    assert refused.status_code == 409  # valid, but the current keys rule it out
    assert (
        error_of(refused)["code"] == "too_many_keys" and "3 active API keys" in error_of(refused)["message"]
    )
    page = client.post("/settings/keys/", {"name": "from the page"})
    assert page.status_code == 400 and "3 active API keys" in page.content.decode()
    with pytest.raises(Exception, match="3 active API keys"):
        call_command("apikey", "create", "--user", "alice", "--name", "from the shell", stdout=io.StringIO())
    assert ApiKey.objects.filter(user=alice).count() == 3

    # A revoked key frees its place.
    ApiKey.objects.filter(user=alice, name="k0").get().revoke()
    assert client.post("/api/v1/keys", {"name": "k3"}, content_type="application/json").status_code == 201

    from models_app.models import UserLimits

    # Staff sees the cap in the admin's add form, and may lift it for one user.
    client.force_login(staff)
    form = client.post("/admin/models_app/apikey/add/", {"user": alice.pk, "name": "from-admin"})
    assert form.status_code == 200 and "3 active API keys" in form.content.decode()
    added = client.post(
        "/admin/models_app/userlimits/add/", {"user": alice.pk, "max_in_flight": "", "max_api_keys": "5"}
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    assert UserLimits.objects.get(user=alice).max_api_keys == 5
    client.post("/admin/models_app/apikey/add/", {"user": alice.pk, "name": "from-admin"})
    assert ApiKey.objects.filter(user=alice, revoked_at__isnull=True).count() == 4
