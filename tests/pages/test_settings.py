"""Settings: Hub tokens are write-only (masked, never in any page), a new API key is shown exactly once,
keys can be revoked, generation defaults are saved; errors appear next to their field."""

from __future__ import annotations

import pytest

from models_app.models import ApiKey, HubCredential, UserPreferences
from tests.factories import make_snapshot

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz1234"


def test_a_credential_is_shown_masked_and_its_token_never_appears(alice_client, alice, hub) -> None:
    hub.add_token(TOKEN, "alice")
    response = alice_client.post("/settings/credentials/", {"name": "personal", "token": TOKEN}, follow=True)
    html = response.content.decode()
    assert response.status_code == 200
    assert "hf_****1234" in html
    assert "works: Hub user alice" in html  # tested with whoami on the way in
    credential = HubCredential.objects.get(owner=alice, name="personal")
    assert credential.hub_username == "alice"
    snap = make_snapshot("org/some-model", owner=alice)
    for url in [
        "/",
        "/models/",
        f"/models/{snap.id}/",
        "/pull/",
        "/downloads/",
        "/cache/",
        "/usage/",
        "/settings/",
        "/health/",
    ]:
        page = alice_client.get(url).content.decode()
        assert TOKEN not in page, url
        assert TOKEN[3:] not in page, url
    assert TOKEN not in credential.token_ciphertext


def test_a_bad_token_is_reported_next_to_the_field(alice_client, db) -> None:
    response = alice_client.post("/settings/credentials/", {"name": "bad", "token": "has spaces in it"})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="credential_token_error"' in html
    assert "has spaces in it" not in html  # a password field never echoes what was typed


def test_a_duplicate_name_is_reported_next_to_the_field(alice_client, alice, hub) -> None:
    from models_app.services.credentials import create_credential

    create_credential(owner=alice, name="personal", token=TOKEN)
    response = alice_client.post("/settings/credentials/", {"name": "personal", "token": TOKEN})
    assert response.status_code == 400
    assert "already have a token with this name" in response.content.decode()


def test_a_refused_token_says_so(alice_client, alice, hub) -> None:
    response = alice_client.post(
        "/settings/credentials/", {"name": "stale", "token": "hf_notknownbythehub99"}, follow=True
    )
    assert "refused this token" in response.content.decode()


def test_test_and_remove_a_credential(alice_client, alice, hub) -> None:
    from models_app.services.credentials import create_credential

    hub.add_token(TOKEN, "alice")
    credential = create_credential(owner=alice, name="personal", token=TOKEN)
    response = alice_client.post(f"/settings/credentials/{credential.id}/test/", follow=True)
    assert "works: Hub user alice" in response.content.decode()
    alice_client.post(f"/settings/credentials/{credential.id}/delete/")
    assert not HubCredential.objects.filter(id=credential.id).exists()


def test_the_default_token_is_marked_chosen_in_settings_and_offered_by_the_pull_page(
    alice_client, alice, bob, hub
) -> None:
    from models_app.services.credentials import create_credential

    first = create_credential(owner=alice, name="personal", token=TOKEN)
    work = create_credential(owner=alice, name="work", token="hf_" + "w" * 26 + "9999")
    bobs = create_credential(owner=bob, name="bobs", token="hf_" + "b" * 30)
    html = alice_client.get("/settings/").content.decode()
    assert html.count(">default</span>") == 1 and "Make default" in html
    assert "Your default: “personal” (hf_****1234)" in alice_client.get("/pull/").content.decode()

    response = alice_client.post(f"/settings/credentials/{work.id}/default/", follow=True)

    assert "now use “work” (hf_****9999)" in response.content.decode()
    assert {c.name for c in HubCredential.objects.filter(is_default=True)} == {"work", "bobs"}
    assert "Your default: “work” (hf_****9999)" in alice_client.get("/pull/").content.decode()
    # Someone else's token cannot be made anyone's default.
    assert alice_client.post(f"/settings/credentials/{bobs.id}/default/").status_code == 404
    first.refresh_from_db()
    assert not first.is_default
    # And back to no default at all: pulls then send no token.
    response = alice_client.post(f"/settings/credentials/{work.id}/default/", {"default": "0"}, follow=True)
    assert "now send none" in response.content.decode()
    assert not HubCredential.objects.filter(owner=alice, is_default=True).exists()
    assert "None (public models)" in alice_client.get("/pull/").content.decode()


def test_a_new_api_key_is_shown_once(alice_client, alice) -> None:
    response = alice_client.post("/settings/keys/", {"name": "laptop"})
    assert response.status_code == 302 and response["Location"] == "/settings/keys/new/"
    first = alice_client.get("/settings/keys/new/")
    html = first.content.decode()
    key = ApiKey.objects.get(user=alice, name="laptop")
    start = html.index('data-testid="raw-key">') + len('data-testid="raw-key">')
    raw = html[start : html.index("<", start)]
    assert raw.startswith(f"mlxcr_{key.prefix}_") and ApiKey.hash(raw) == key.key_hash
    assert "no-cache" in first["Cache-Control"]
    again = alice_client.get("/settings/keys/new/", follow=True)
    assert raw not in again.content.decode()
    assert raw not in alice_client.get("/settings/").content.decode()
    assert key.display in alice_client.get("/settings/").content.decode()


def test_a_key_needs_a_name(alice_client, db) -> None:
    response = alice_client.post("/settings/keys/", {"name": ""})
    assert response.status_code == 400
    assert 'id="key_name_error"' in response.content.decode()


def test_revoke_a_key(alice_client, alice) -> None:
    key, _raw = ApiKey.issue(user=alice, name="old")
    response = alice_client.post(f"/settings/keys/{key.id}/revoke/", follow=True)
    key.refresh_from_db()
    assert not key.is_active
    assert "revoked" in response.content.decode()


def test_generation_defaults_are_saved(alice_client, alice) -> None:
    response = alice_client.post(
        "/settings/defaults/",
        {"temperature": "0.2", "top_p": "0.9", "max_tokens": "256", "system_prompt": "Be brief."},
    )
    assert response.status_code == 302
    assert UserPreferences.generation_defaults(alice) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 256,
        "system_prompt": "Be brief.",
    }
    assert 'value="0.2"' in alice_client.get("/settings/").content.decode()


@pytest.mark.parametrize(("field", "value"), [("temperature", "5"), ("max_tokens", "0"), ("top_p", "x")])
def test_bad_generation_defaults_are_shown_next_to_the_field(
    alice_client, db, field: str, value: str
) -> None:
    data = {"temperature": "0.7", "top_p": "0.9", "max_tokens": "100", field: value}
    response = alice_client.post("/settings/defaults/", data)
    assert response.status_code == 400
    assert f'id="id_{field}_error"' in response.content.decode()


def test_field_ids_are_unique_on_the_settings_page(alice_client, db) -> None:
    import re

    html = alice_client.get("/settings/").content.decode()
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert 'for="credential_name"' in html and 'for="key_name"' in html
