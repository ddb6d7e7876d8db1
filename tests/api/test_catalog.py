"""The catalog version (services/catalog.py): an API completion keeps its key and its model's rows between
requests while no catalog row changed. Every way a row changes must replace the version, or a revoked key, a
deactivated user or a deleted model would go on answering from a web process's memo."""

from __future__ import annotations

import time

import openai
import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from models_app.models import ApiKey, Node, Repository, Snapshot, UserLimits
from models_app.services import catalog
from models_app.services.apikeys import revoke_apikey
from models_app.services.cache import delete_model
from models_app.services.nodes import record_seen

MODEL = "test/tiny-chat"


def replaces_version(change) -> bool:  # type: ignore[no-untyped-def]
    before = catalog.version()
    change()
    return catalog.version() != before


# --- What replaces it ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_write_to_a_catalog_row_replaces_the_version(alice, alice_key: str, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    key = ApiKey.objects.get(key_hash=ApiKey.hash(alice_key))
    snapshots = Snapshot.objects.filter(id=tiny_snapshot.id)
    User = get_user_model()
    writes = {
        "a key revoked": lambda: revoke_apikey(key),
        "keys updated in bulk": lambda: ApiKey.objects.filter(user=alice).update(name="renamed"),
        "a user saved": lambda: User.objects.get(id=alice.id).save(),
        "a user's limits made": lambda: UserLimits.objects.create(user=alice, max_in_flight=2),
        "limits updated in bulk": lambda: UserLimits.objects.filter(user=alice).update(max_in_flight=3),
        "a snapshot's status updated": lambda: snapshots.update(status=Snapshot.Status.INVALID),
        "a snapshot saved": lambda: Snapshot.objects.get(id=tiny_snapshot.id).save(),
        "a repository made": lambda: Repository.objects.create(repo_id="test/another"),
        "repositories deleted": lambda: Repository.objects.filter(repo_id="test/another").delete(),
        "snapshots updated in bulk": lambda: Snapshot.objects.bulk_update(
            [Snapshot(id=tiny_snapshot.id, status=Snapshot.Status.READY)], ["status"]
        ),
        "snapshots made in bulk": lambda: Snapshot.objects.bulk_create(
            [Snapshot(repository=tiny_snapshot.repository, commit_sha="c" * 40, node="elsewhere")]
        ),
        "a user deleted": lambda: User.objects.create(username="carol").delete(),
        "a machine remembered": lambda: record_seen("another-machine"),
        "a machine forgotten": lambda: Node.objects.filter(name="another-machine").delete(),
    }
    for what, write in writes.items():
        assert replaces_version(write), what


@pytest.mark.django_db
def test_a_use_stamp_leaves_the_version_alone(alice, alice_key: str, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    """last_used_at is written after every answer and on a key's use: it must not empty every memo."""
    from django.utils import timezone

    key = ApiKey.objects.get(key_hash=ApiKey.hash(alice_key))
    record_seen("this-machine")
    stamps = {
        "a model's last use": lambda: Snapshot.objects.filter(id=tiny_snapshot.id).update(
            last_used_at=timezone.now()
        ),
        "a key's last use": lambda: ApiKey.objects.filter(id=key.id).update(last_used_at=timezone.now()),
        "a login": lambda: alice.save(update_fields=["last_login"]),
        "a machine's reconcile": lambda: record_seen("this-machine"),
        "models' last uses in bulk": lambda: Snapshot.objects.bulk_update(
            [Snapshot(id=tiny_snapshot.id, last_used_at=timezone.now())], ["last_used_at"]
        ),
        "an update that matched nothing": lambda: Snapshot.objects.filter(id=-1).update(status="ready"),
    }
    for what, stamp in stamps.items():
        assert not replaces_version(stamp), what


@pytest.mark.django_db(transaction=True)
def test_a_change_replaces_it_again_when_its_transaction_commits(alice) -> None:  # type: ignore[no-untyped-def]
    """A request that read the rows between the change and the commit read the old ones under the new version:
    the commit's replacement throws them away."""
    with transaction.atomic():
        before = catalog.version()
        UserLimits.objects.create(user=alice, max_in_flight=2)
        during = catalog.version()
        assert during != before
    assert catalog.version() not in (before, during)


def test_a_lost_version_is_made_anew(settings) -> None:  # type: ignore[no-untyped-def]
    """A Redis that lost its data (or a new one) must not match a memo kept before."""
    from models_app.services import redis as app_redis

    first = catalog.version()
    app_redis.client().delete(catalog.version_key())
    assert catalog.version() not in (None, first)


# --- The memo ----------------------------------------------------------------------------------------------


def test_a_memo_keeps_a_value_while_its_version_holds(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    memo: catalog.Memo[str] = catalog.Memo(size=2)
    loads: list[str] = []

    def load(value: str | None):  # type: ignore[no-untyped-def]
        return lambda: loads.append(str(value)) or value

    assert memo.get("a", "v1", load("A")) == "A"
    assert memo.get("a", "v1", load("other")) == "A"  # kept
    assert memo.get("a", "v2", load("A2")) == "A2"  # another version: read again
    assert (
        memo.get("b", None, load("B")) == "B" and memo.get("b", None, load("B2")) == "B2"
    )  # no Redis: never kept
    assert (
        memo.get("c", "v2", load(None)) is None and memo.get("c", "v2", load("C")) == "C"
    )  # a miss: not kept
    memo.get("d", "v2", load("D"))  # a third entry: the least recently used ("a") goes
    assert memo.get("a", "v2", load("A3")) == "A3"
    clock = time.monotonic()
    monkeypatch.setattr(catalog.time, "monotonic", lambda: clock + catalog.MAX_AGE + 1)
    assert memo.get("a", "v2", load("A4")) == "A4"  # too old, whatever the version says
    assert loads == ["A", "A2", "B", "B2", "None", "C", "D", "A3", "A4"]


# --- Through the server, with the openai client --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("inference_worker")
def test_the_server_never_answers_from_a_memo_the_catalog_outdated(  # type: ignore[no-untyped-def]
    asgi_server, alice_key: str, bob_key: str, tiny_snapshot, make_snapshot
) -> None:
    def ask(key: str, model: str = MODEL) -> str:
        client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=key, max_retries=0, timeout=60)
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
        )
        return completion.choices[0].finish_reason

    # Each change follows a request that had its rows kept.
    assert ask(alice_key) == "length"
    revoke_apikey(ApiKey.objects.get(key_hash=ApiKey.hash(alice_key)))
    with pytest.raises(openai.AuthenticationError):
        ask(alice_key)

    assert ask(bob_key) == "length"
    bob = ApiKey.objects.select_related("user").get(key_hash=ApiKey.hash(bob_key)).user
    bob.is_active = False
    bob.save()
    with pytest.raises(openai.AuthenticationError):
        ask(bob_key)

    bob.is_active = True
    bob.save()
    assert ask(bob_key) == "length"
    Snapshot.objects.filter(id=tiny_snapshot.id).update(last_used_at=None)  # idle long enough to delete
    delete_model(MODEL, user=None)
    with pytest.raises(openai.NotFoundError):
        ask(bob_key)

    # A model not ready is not kept as missing: it answers as soon as it is ready.
    pending = make_snapshot("test/tiny-pending", path=tiny_snapshot.path, status=Snapshot.Status.DOWNLOADING)
    with pytest.raises(openai.NotFoundError):
        ask(bob_key, "test/tiny-pending")
    Snapshot.objects.filter(id=pending.id).update(status=Snapshot.Status.READY)
    assert ask(bob_key, "test/tiny-pending") == "length"
