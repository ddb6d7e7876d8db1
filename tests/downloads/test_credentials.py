"""Hub tokens at rest: encrypted, rotatable, checked against the Hub, never stored in clear."""

from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from models_app.models import HubCredential
from models_app.services import credentials

TOKEN = "hf_AliceToken000111222333444555"

pytestmark = pytest.mark.django_db


def test_it_stores_only_ciphertext_and_the_last_four_characters(alice) -> None:
    credential = credentials.create_credential(owner=alice, name=" work ", token=f"  {TOKEN}\n")

    row = HubCredential.objects.values().get(id=credential.id)
    assert TOKEN not in json.dumps(row, default=str)
    assert row["name"] == "work" and row["token_last4"] == TOKEN[-4:]
    assert credential.masked == f"hf_****{TOKEN[-4:]}" and TOKEN not in str(credential)
    assert credentials.credential_token(credential) == TOKEN


@pytest.mark.parametrize("token", ["", "   ", "hf_with space", "hf_\x00nul", "hf_é", "x" * 501])
def test_it_refuses_tokens_that_cannot_be_tokens(alice, token: str) -> None:
    with pytest.raises(credentials.CredentialError):
        credentials.create_credential(owner=alice, name="bad", token=token)


def test_keys_rotate_the_first_encrypts_and_all_decrypt(alice, settings) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.CREDENTIALS_KEYS = [old]
    credential = credentials.create_credential(owner=alice, name="hub", token=TOKEN)
    before = credential.token_ciphertext

    settings.CREDENTIALS_KEYS = [new, old]  # new key first: it encrypts, the old one still decrypts
    assert credentials.credential_token(credential) == TOKEN
    assert credentials.rotate_credentials() == 1
    credential.refresh_from_db()
    assert credential.token_ciphertext != before

    settings.CREDENTIALS_KEYS = [new]  # the old key can go now
    assert credentials.credential_token(credential) == TOKEN
    settings.CREDENTIALS_KEYS = [old]
    with pytest.raises(credentials.CredentialError) as caught:
        credentials.credential_token(credential)
    assert credential.token_ciphertext not in str(caught.value)


def test_check_stores_the_username_and_whoami_without_token_fields(hub, alice) -> None:
    hub.add_token(TOKEN, "alice-on-hub")
    credential = credentials.create_credential(owner=alice, name="hub", token=TOKEN)

    result = credentials.check_credential(credential)

    assert result == {"ok": True, "username": "alice-on-hub", "error": ""}
    credential.refresh_from_db()
    assert (
        credential.hub_username == "alice-on-hub"
        and credential.last_verified_at
        and not credential.last_error
    )
    stored = json.dumps(credential.whoami)
    assert "accessToken" not in stored and TOKEN not in stored
    assert credential.whoami["name"] == "alice-on-hub" and credential.whoami["auth"] == {
        "type": "access_token"
    }
    assert any(r.path == "/api/whoami-v2" for r in hub.requests)


def test_check_records_a_refused_token(hub, alice) -> None:
    credential = credentials.create_credential(owner=alice, name="hub", token="hf_Unknown0000000000000000")

    result = credentials.check_credential(credential)

    assert result["ok"] is False and "refused" in result["error"]
    credential.refresh_from_db()
    assert credential.last_error and credential.last_verified_at is None
    assert "hf_Unknown" not in credential.last_error


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_a_lone_stored_token_its_owners_default(alice, bob) -> None:
    """Stored before defaults existed: a user with one token meant pulls to use it; with several, they choose."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = (
        [("models_app", "0006_message_cached_tokens")],
        [("models_app", "0007_snapshot_partial_default_credential")],
    )
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = (
        MigrationExecutor(connection)
        .loader.project_state(before)
        .apps.get_model("models_app", "HubCredential")
    )
    for owner, name in [(alice, "only"), (bob, "one"), (bob, "two")]:
        old.objects.create(owner_id=owner.id, name=name, token_ciphertext="x", token_last4="abcd")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    try:
        executor.migrate(after)
        defaults = set(HubCredential.objects.filter(is_default=True).values_list("name", flat=True))
    finally:
        # Back to the latest schema: the next tests in this process share the database.
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert defaults == {"only"}
