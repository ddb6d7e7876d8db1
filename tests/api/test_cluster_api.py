"""The OpenAI API across machines, at the view: every live machine's ready models are listed and served, with the
chat-template markers read from the snapshot's row (the web server has none of the files), the request goes to
the machine that has the model loaded, else the least busy, and a model whose machines are down is a 503 naming
them at once. A stand-in worker answers here (its presence key is real, in the real Redis); the real thing, two
complete nodes, is tests/reliability/test_two_nodes.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from models_app.models import Message, Snapshot
from models_app.services import chat, inference, routing, workers
from models_app.services import redis as app_redis
from models_app.services.model_markers import read_markers
from tests.api.test_openai_parsing import TOOLS, fake_worker, post
from tests.api.test_openai_parsing import thinking_model_dir as thinking_model_dir  # a fixture

pytestmark = pytest.mark.django_db(transaction=True)

TOOL_REPLY = ['<tool_call>{"name": "get_weather", ', '"arguments": {"city": "Paris"}}</tool_call>']


@pytest.fixture
def machine() -> Iterator[Callable[..., str]]:
    """Announce another machine's inference worker in Redis, as its heartbeat would (loaded models, busy);
    gone after the test."""
    hostnames: list[str] = []

    def announce(stem: str, *, loaded: tuple[int, ...] = (), busy: bool = False) -> str:
        node = f"{stem}-{uuid.uuid4().hex[:6]}"
        hostname = f"inference@{node}"
        hostnames.append(hostname)
        extra: dict[str, Any] = {"loaded_models": [{"snapshot_id": i} for i in loaded]}
        if busy:
            extra["busy_since"] = time.time()
        workers._extra_providers.append(lambda: extra)
        try:
            workers.beat_once(
                hostname=hostname, queues=["inference", f"inference.{node}"], started_at=time.time()
            )
        finally:
            workers._extra_providers.pop()
        return node

    yield announce
    for hostname in hostnames:
        app_redis.client().delete(app_redis.key("workers", hostname))


def reannounce(node: str, *, loaded: tuple[int, ...] = ()) -> None:
    extra = {"loaded_models": [{"snapshot_id": i} for i in loaded]}
    workers._extra_providers.append(lambda: extra)
    try:
        workers.beat_once(
            hostname=f"inference@{node}", queues=["inference", f"inference.{node}"], started_at=0
        )
    finally:
        workers._extra_providers.pop()


def on_node(snapshot: Snapshot, node: str, **fields: Any) -> Snapshot:
    Snapshot.objects.filter(id=snapshot.id).update(node=node, **fields)
    snapshot.refresh_from_db()
    return snapshot


@pytest.fixture
def queues_sent(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], list[str | None]]:
    """The stand-in worker, recording the queue each request was sent to."""

    def install(texts: list[str]) -> list[str | None]:
        fake_worker(monkeypatch, texts)
        answer = inference.start_generation
        sent: list[str | None] = []

        def start(request: dict[str, Any], queue: str | None = None) -> str | None:
            sent.append(queue)
            answer(request)
            return queue

        monkeypatch.setattr(inference, "start_generation", start)
        return sent

    return install


def test_a_model_on_another_machine_is_listed_and_served_with_the_markers_of_its_row(
    alice_api, alice_key: str, make_snapshot, machine, queues_sent, thinking_model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    far = machine("far")
    markers = read_markers(thinking_model_dir)  # what that machine's worker wrote when the pull ended
    missing = f"/nowhere/{uuid.uuid4().hex}/models--test--far/snapshots/{'c' * 40}"
    snapshot = make_snapshot("test/far-thinker", path=missing, markers=markers)
    on_node(snapshot, far)
    assert not Path(missing).exists()
    sent = queues_sent(TOOL_REPLY)

    listed = alice_api.get("/v1/models").json()["data"]
    assert "test/far-thinker" in [m["id"] for m in listed]
    assert alice_api.get("/v1/models/test/far-thinker").status_code == 200

    body = {
        "model": "test/far-thinker",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": TOOLS,
    }
    response = post(alice_key, body)

    assert response.status_code == 200, response.content
    assert sent == [f"inference.{far}"]
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_row_without_markers_is_answered_as_plain_text_without_reading_its_path(
    alice_key: str, make_snapshot, machine, queues_sent, thinking_model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    """Its path holds a tool-calling template on this very machine: the view must not read it."""
    node = machine("old")
    on_node(make_snapshot("test/old-row", path=str(thinking_model_dir)), node)
    queues_sent(TOOL_REPLY)

    body = {"model": "test/old-row", "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS}
    choice = post(alice_key, body).json()["choices"][0]

    assert choice["finish_reason"] == "stop" and choice["message"]["content"].startswith("<tool_call>")


def test_a_model_whose_machine_is_down_is_a_503_naming_it_at_once_and_is_not_listed(
    alice, alice_api, alice_key: str, make_snapshot, machine, queues_sent
) -> None:  # type: ignore[no-untyped-def]
    machine("up")  # the cluster has live machines; the one holding the model is not among them
    gone = f"gone-{uuid.uuid4().hex[:6]}"
    snapshot = on_node(make_snapshot("test/on-a-gone-machine"), gone)
    sent = queues_sent(["never"])

    assert "test/on-a-gone-machine" not in [m["id"] for m in alice_api.get("/v1/models").json()["data"]]
    response = post(
        alice_key, {"model": "test/on-a-gone-machine", "messages": [{"role": "user", "content": "hi"}]}
    )

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "node_down" and gone in error["message"] and "down" in error["message"]
    assert sent == []  # refused before anything was queued: no pickup timeout to wait for
    # The chat page's path says the same, before anything is saved.
    with pytest.raises(chat.ChatError) as refused:
        chat.post_message(
            user=alice, conversation_id=None, content="hi", reply_channel="x!y", snapshot_id=snapshot.id
        )
    assert refused.value.code == "node_down" and gone in refused.value.message
    assert not Message.objects.exists()


def test_a_chat_goes_to_the_machine_that_has_the_model_loaded_else_the_least_busy(
    make_snapshot, machine
) -> None:  # type: ignore[no-untyped-def]
    sha = uuid.uuid4().hex[:40].ljust(40, "0")
    x_copy = make_snapshot("test/twice", commit_sha=sha)
    y_copy = make_snapshot("test/twice", commit_sha=sha, cache_root="other")
    x = machine("x")
    y = machine("y", loaded=(0,))
    on_node(x_copy, x)
    on_node(y_copy, y)
    reannounce(y, loaded=(y_copy.id,))
    candidates = [x_copy, y_copy]

    assert routing.choose(candidates, label="test/twice").snapshot == y_copy  # loaded there: no load
    reannounce(y)  # unloaded: now the least busy wins
    redis = app_redis.client()
    redis.zadd(inference.queued_key(f"inference.{x}"), {"a": time.time(), "b": time.time()})
    try:
        assert routing.choose(candidates, label="test/twice") == routing.Route(y_copy, f"inference.{y}")
        redis.zadd(inference.queued_key(f"inference.{y}"), {"c": 1, "d": 2, "e": 3})
        assert routing.choose(candidates, label="test/twice") == routing.Route(x_copy, f"inference.{x}")
    finally:
        redis.delete(inference.queued_key(f"inference.{x}"), inference.queued_key(f"inference.{y}"))


def test_the_chat_page_is_routed_to_a_copy_on_a_live_machine(
    alice, make_snapshot, machine, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The page names one snapshot; the same commit on another machine answers when the first is down."""
    sha = uuid.uuid4().hex[:40].ljust(40, "0")
    picked = on_node(make_snapshot("test/copied", commit_sha=sha), f"down-{uuid.uuid4().hex[:6]}")
    up = machine("up")
    copy = on_node(make_snapshot("test/copied", commit_sha=sha, cache_root="other"), up)
    sent: list[tuple[int, str | None]] = []
    monkeypatch.setattr(
        inference,
        "start_generation",
        lambda request, queue=None: sent.append((request["snapshot_id"], queue)),
    )

    started = chat.post_message(
        user=alice, conversation_id=None, content="hi", reply_channel="x!y", snapshot_id=picked.id
    )

    assert sent == [(copy.id, f"inference.{up}")]
    assert Message.objects.get(id=started.assistant_message_id).snapshot_id == copy.id


def test_a_newer_commit_on_a_machine_that_is_down_gives_way_to_an_older_one_that_is_up(
    make_snapshot, machine
) -> None:  # type: ignore[no-untyped-def]
    old = on_node(make_snapshot("test/two-commits"), machine("up"))
    new = on_node(make_snapshot("test/two-commits"), f"down-{uuid.uuid4().hex[:6]}")
    newest_first = [new, old]

    assert routing.choose(newest_first, label="test/two-commits").snapshot == old
