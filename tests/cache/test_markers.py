"""A snapshot's chat-template markers live in its row, written by the worker that has the files: when the
snapshot becomes ready, and lazily (reconcile, verify) for rows that have none, as rows written before the field
do. The web server reads only the row (tests/api/test_cluster_api.py)."""

from __future__ import annotations

import json

import pytest

from models_app.models import Snapshot
from models_app.services.reconcile import reconcile_cache
from models_app.services.verify import verify_model
from tests.api.test_openai_parsing import QWEN_LIKE_TEMPLATE
from tests.cache.conftest import model_files, snapshot_of

pytestmark = pytest.mark.django_db

THINKING_TOKENIZER = {
    "tokenizer.json": json.dumps(
        {"added_tokens": [{"id": 1, "content": "<think>"}, {"id": 2, "content": "</think>"}], "model": {}}
    ).encode(),
    "tokenizer_config.json": json.dumps({"chat_template": QWEN_LIKE_TEMPLATE}).encode(),
}
EXPECTED = {
    "think_start": "<think>",
    "think_end": "</think>",
    "tool_parser": "json_tools",
    "tool_start": "<tool_call>",
    "tool_end": "</tool_call>",
    "starts_in_reasoning": False,
}


@pytest.fixture
def thinker(hub, fetch, new_repo_id) -> Snapshot:  # type: ignore[no-untyped-def]
    repo_id = new_repo_id("thinker")
    sha = hub.create_repo(repo_id, model_files("t", **THINKING_TOKENIZER))
    fetch(repo_id)
    reconcile_cache()
    return snapshot_of(repo_id, sha)


def test_the_import_writes_the_markers_into_the_row(thinker: Snapshot) -> None:
    assert thinker.status == Snapshot.Status.READY
    assert thinker.markers == EXPECTED


def test_reconcile_fills_a_row_that_has_none_and_then_does_nothing(thinker: Snapshot) -> None:
    Snapshot.objects.filter(id=thinker.id).update(markers=None)  # a row written before the field

    assert reconcile_cache().markers_filled == 1
    thinker.refresh_from_db()
    assert thinker.markers == EXPECTED
    assert reconcile_cache().markers_filled == 0


def test_verify_fills_a_row_that_has_none(thinker: Snapshot) -> None:
    Snapshot.objects.filter(id=thinker.id).update(markers=None)
    thinker.refresh_from_db()

    assert verify_model(thinker).ok
    thinker.refresh_from_db()
    assert thinker.markers == EXPECTED


def test_a_row_of_another_machine_is_left_for_that_machine(thinker: Snapshot) -> None:
    """Its files are not this machine's to read (here they happen to be: the row says another node)."""
    Snapshot.objects.filter(id=thinker.id).update(markers=None, node="another-machine")

    assert reconcile_cache().markers_filled == 0
    thinker.refresh_from_db()
    assert thinker.markers is None


def test_a_model_load_fills_a_row_that_has_none(thinker: Snapshot) -> None:
    """The inference worker reads the row before it loads a model (engine.state.spec_for, one plain statement),
    and fills the markers it lacks."""
    from models_app.services.engine.state import spec_for

    Snapshot.objects.filter(id=thinker.id).update(markers=None)

    assert spec_for(thinker.id).snapshot_id == thinker.id
    thinker.refresh_from_db()
    assert thinker.markers == EXPECTED
