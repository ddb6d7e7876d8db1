"""The inference worker's intake (models_app/services/engine/intake.py): generation requests taken straight off
their queue's Redis list, one per free slot. The real worker serving real requests through it is what every
test of tests/chat proves; these isolate the intake's own rules against real Redis, with the generation
itself replaced by a recorder."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from models_app.services import inference, workers
from models_app.services import redis as app_redis
from models_app.services.engine import generation, intake


@pytest.fixture
def inbox(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A queue of its own, with a worker's presence so start_generation accepts requests for it."""
    settings.REDIS_PREFIX = f"mlxcr-test-intake-{uuid.uuid4().hex[:8]}"
    queue = "inference"
    workers.beat_once(hostname="intake@test", queues=[queue], started_at=time.time())
    yield queue
    client = app_redis.client()
    keys = list(client.scan_iter(f"{settings.REDIS_PREFIX}:*"))
    if keys:
        client.delete(*keys)


class Recorder:
    """Stands in for generation.generate: records each request and holds it until released."""

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._cond = threading.Condition()

    def __call__(self, request: dict[str, Any], **_: Any) -> None:
        with self._cond:
            self.started.append(request)
            self._cond.notify_all()
        self.release.wait(10)

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.started) >= count, timeout)
        return list(self.started)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    monkeypatch.setattr(generation, "generate", rec)
    yield rec
    rec.release.set()


def request(number: int) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "reply_channel": f"test!{number}",
        "snapshot_id": number,
        "messages": [{"role": "user", "content": f"hello {number}"}],
    }


def test_a_request_reaches_a_slot_as_sent_with_its_queue_and_time(inbox: str, recorder: Recorder) -> None:
    sent = request(1)
    before = time.time()
    assert inference.start_generation(sent, queue=inbox) == inbox
    taker = intake.Intake([inbox], slots=1).start()
    try:
        [got] = recorder.wait_for(1)
    finally:
        recorder.release.set()
        taker.stop()
    assert {k: got[k] for k in sent} == sent
    assert got["queue"] == inbox and before <= got["enqueued_at"] <= time.time()
    assert "enqueue" in got["hops"]
    assert app_redis.client().llen(inference.inbox_key(inbox)) == 0


def test_what_finds_no_free_slot_stays_in_the_list_in_line(inbox: str, recorder: Recorder) -> None:
    first, second = request(1), request(2)
    inference.start_generation(first, queue=inbox)
    inference.start_generation(second, queue=inbox)
    taker = intake.Intake([inbox], slots=1).start()
    try:
        assert [r["request_id"] for r in recorder.wait_for(1)] == [first["request_id"]]
        time.sleep(intake.WAIT + 0.5)  # the intake had the time to take it, had a slot been free
        # Still in Redis, where another machine's worker could take it, and still in line for "N ahead".
        assert app_redis.client().llen(inference.inbox_key(inbox)) == 1
        assert app_redis.client().zscore(inference.queued_key(inbox), second["request_id"]) is not None
        recorder.release.set()
        assert [r["request_id"] for r in recorder.wait_for(2)] == [first["request_id"], second["request_id"]]
    finally:
        recorder.release.set()
        taker.stop()


def test_what_waits_is_taken_at_once_up_to_the_free_slots(inbox: str, recorder: Recorder) -> None:
    # The intake takes the oldest with BLPOP and what else waits in one more round trip (a burst of clients
    # reaches the engine loop together), never more than it has free slots for.
    sent = [request(n) for n in range(5)]
    for r in sent:
        inference.start_generation(r, queue=inbox)
    taker = intake.Intake([inbox], slots=3).start()
    try:
        first = recorder.wait_for(3)
        time.sleep(intake.WAIT + 0.5)  # the time to take more, had it counted its slots wrong
        assert len(recorder.started) == 3
        assert {r["request_id"] for r in first} == {r["request_id"] for r in sent[:3]}
        assert app_redis.client().llen(inference.inbox_key(inbox)) == 2
        recorder.release.set()
        served = recorder.wait_for(5)
    finally:
        recorder.release.set()
        taker.stop()
    assert sorted(r["request_id"] for r in served) == sorted(r["request_id"] for r in sent)
    # Each one the engine loop was told to expect has landed (here none reached it: the recorder stands in).
    from models_app.services.engine.batch import engine_loop

    assert engine_loop()._arriving == 0


@pytest.mark.django_db(transaction=True)
def test_a_request_that_fails_on_its_way_is_no_longer_expected(inbox: str, engine, run_async) -> None:  # type: ignore[no-untyped-def]
    # The real generation this time: a model that does not exist fails in its slot before the engine loop.
    # The loop must stop counting it, or every new prompt would wait GATHER for it.
    from channels.layers import get_channel_layer

    from models_app.services.engine.batch import engine_loop

    layer = get_channel_layer()
    channel = run_async(layer.new_channel())
    sent = {**request(1), "reply_channel": channel, "snapshot_id": 999_999}
    inference.start_generation(sent, queue=inbox)
    taker = intake.Intake([inbox], slots=2).start()
    try:
        reply = run_async(asyncio.wait_for(layer.receive(channel), 10))
    finally:
        taker.stop()  # waits for its slots: the one above has returned
    assert reply["type"] == "chat.error" and reply["request_id"] == sent["request_id"]
    assert engine_loop()._arriving == 0


def test_a_stale_request_and_a_malformed_one_are_dropped_and_the_next_one_served(
    inbox: str, recorder: Recorder
) -> None:
    stale = {**request(1), "enqueued_at": time.time() - inference.QUEUE_EXPIRY - 5, "queue": inbox}
    client = app_redis.client()
    client.zadd(inference.queued_key(inbox), {stale["request_id"]: stale["enqueued_at"]})
    client.rpush(inference.inbox_key(inbox), json.dumps(stale), "not json", json.dumps(["not", "a", "dict"]))
    fresh = request(2)
    inference.start_generation(fresh, queue=inbox)
    taker = intake.Intake([inbox], slots=1).start()
    try:
        served = recorder.wait_for(1)
        recorder.release.set()
    finally:
        taker.stop()
    assert [r["request_id"] for r in served] == [fresh["request_id"]]
    assert recorder.started == served  # nothing else was run
    assert client.zscore(inference.queued_key(inbox), stale["request_id"]) is None  # out of the line


def test_a_request_for_a_queue_nobody_serves_is_refused_at_once(settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_PREFIX = f"mlxcr-test-intake-{uuid.uuid4().hex[:8]}"
    with pytest.raises(inference.InferenceUnavailable):
        inference.start_generation(request(1), queue="inference")
    assert app_redis.client().llen(inference.inbox_key("inference")) == 0
