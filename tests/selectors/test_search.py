"""One model search: the Models page, `GET /api/v1/models?q=` and `manage.py models QUERY` (alias `ls`) find
the same snapshots for the same query, among those the user may see."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import call_command

from models_app.models import Snapshot
from models_app.selectors.snapshots import snapshot_list
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(alice, bob) -> dict[str, Snapshot]:  # type: ignore[no-untyped-def]
    return {
        "coder": make_snapshot("mlx-community/Qwen2.5-Coder-7B-4bit", model_type="qwen2"),
        "llama": make_snapshot("org/tiny-llama", model_type="llama"),
        "phi": make_snapshot("org/phi-mini", model_type="phi3"),
        "alices": make_snapshot("alice/secret-chat", owner=alice, private=True, model_type="qwen2"),
        "bobs": make_snapshot("bob/qwen-hidden", owner=bob, private=True, model_type="qwen2"),
        "broken": make_snapshot("org/qwen-broken", model_type="qwen2", status=Snapshot.Status.INVALID),
    }


def _page(client, query: str) -> set[int]:  # type: ignore[no-untyped-def]
    html = client.get("/models/", {"q": query}).content.decode()
    return {int(pk) for pk in re.findall(r'class="repo" href="/models/(\d+)/"', html)}


def _api(client, query: str) -> set[int]:  # type: ignore[no-untyped-def]
    body = client.get("/api/v1/models", {"q": query, "limit": 500}).json()
    return {row["id"] for row in body["results"]}


def _cli(command: str, query: str) -> set[int]:
    out = StringIO()
    call_command(command, query, "--user", "alice", "--json", stdout=out)
    return {row["snapshot_id"] for row in json.loads(out.getvalue())}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # In the repo id of one, in the model type of others: both fields, everywhere.
        ("qwen", {"coder", "alices", "broken"}),
        ("phi3", {"phi"}),  # the model type only
        ("  QWEN   coder ", {"coder"}),  # every word, any case, spaces ignored
        ("llama mini", set()),  # the words must all match the same snapshot
    ],
)
def test_the_page_the_api_and_the_cli_find_the_same_models(client, alice, models, query, expected) -> None:
    client.force_login(alice)
    want = {models[name].id for name in expected}

    assert _page(client, query) == want
    assert _api(client, query) == want
    assert _cli("models", query) == want
    assert _cli("ls", query) == want


def test_an_empty_query_finds_every_model_the_user_may_see(alice, models) -> None:
    assert set(snapshot_list(user=alice, query="")) == set(snapshot_list(user=alice))
    assert models["bobs"] not in set(snapshot_list(user=alice, query="qwen"))
