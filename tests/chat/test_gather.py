"""Requests that come together start together (engine/batch.py GATHER): a new prompt waits for the requests
the worker's intake has taken but that have not reached the engine loop yet, so a burst of clients shares one
prompt pass, as mlx_lm.server's does. Real in-process engine, real tiny model; the waits here are far longer
than any real arrival gap, so what is proven is the rule, not a race."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from models_app.services.engine import batch as batch_module
from models_app.services.engine.batch import engine_loop
from tests.chat.conftest import RecordingLayer, assert_well_formed, chat_request, deltas_text
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db(transaction=True)

# Long enough that, without the rule, each request would have had its own first step long before the next
# one arrived; the gather must end because they arrived, never because it timed out.
ARRIVAL_GAP = 0.2


class StepSpy:
    """What each real batch step starts with: how many requests, how many of them past their prompt, and how
    often each answer sends its text meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[tuple[int, int]] = []
        self.intervals: list[set[float]] = []
        real = batch_module._ModelBatch.step

        def step(model_batch: Any, engine: Any, interval: float) -> None:
            members = list(model_batch.members.values())
            self.steps.append((len(members), sum(m.decoding for m in members)))
            real(model_batch, engine, interval)
            self.intervals.append({m.answer.interval for m in members})

        monkeypatch.setattr(batch_module._ModelBatch, "step", step)


@pytest.fixture
def snapshot(tiny_model_path):  # type: ignore[no-untyped-def]
    return make_snapshot("test/gather", path=tiny_model_path)


def generate_in_threads(engine, requests: list[dict[str, Any]], arrivals: list[Any]) -> list[Any]:  # type: ignore[no-untyped-def]
    """Each request in its own thread, as the intake's slots run them, ARRIVAL_GAP apart."""
    layer = RecordingLayer()
    usages: list[Any] = [None] * len(requests)

    def run(i: int) -> None:
        usages[i] = engine.generate(requests[i], layer=layer, arrival=arrivals[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
        time.sleep(ARRIVAL_GAP)
    for thread in threads:
        thread.join(60)
    for request in requests:
        assert_well_formed(layer.messages(request["request_id"]))
    return [(usages[i], layer.messages(r["request_id"])) for i, r in enumerate(requests)]


@pytest.mark.timeout(60)
def test_requests_taken_together_share_their_first_prompt_pass(
    engine, snapshot, monkeypatch, settings
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(batch_module, "GATHER", 30.0)
    settings.CHAT_BATCH_INTERVAL = 0.025
    loop = engine_loop()
    requests = [
        chat_request(
            snapshot.id,
            [{"role": "user", "content": f"question number {i}"}],
            options={"temperature": 0.0, "max_tokens": 6},
        )
        for i in range(3)
    ]
    # What each answer is alone, for the batched ones to match.
    alone = [deltas_text(generate_in_threads(engine, [r], [None])[0][1]) for r in requests]

    spy = StepSpy(monkeypatch)
    arrivals = [loop.expect() for _ in requests]  # as the intake does when it takes them off Redis
    results = generate_in_threads(
        engine, [{**r, "request_id": str(uuid.uuid4())} for r in requests], arrivals
    )

    # The first step had all three, none past its prompt: one prompt pass for the burst, although each reached
    # the loop ARRIVAL_GAP after the one before.
    assert spy.steps[0] == (3, 0)
    # Three answers streaming: each sends its text a third as often, so the relay's messages stay as many as
    # one answer's (delta_interval); a lone answer at the base interval.
    base = settings.CHAT_BATCH_INTERVAL
    assert spy.intervals[0] == {min(batch_module.MAX_DELTA_INTERVAL, 3 * base)}
    for (usage, messages), text in zip(results, alone, strict=True):
        assert usage is not None and usage["completion_tokens"] == 6
        assert deltas_text(messages) == text
    assert loop._arriving == 0


@pytest.mark.timeout(30)
def test_a_request_that_never_comes_does_not_hold_the_others(engine, snapshot, monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    # A request the intake took can fail on its way (a malformed one, a slot that failed): it lands without a
    # job, and the loop stops waiting for it at once. Waiting out this gather would hit the test's timeout.
    monkeypatch.setattr(batch_module, "GATHER", 600.0)
    loop = engine_loop()
    spy = StepSpy(monkeypatch)
    coming, failing = loop.expect(), loop.expect()
    request = chat_request(snapshot.id, options={"temperature": 0.0, "max_tokens": 4})
    threading.Timer(ARRIVAL_GAP, failing.land).start()
    [(usage, _)] = generate_in_threads(engine, [request], [coming])
    assert usage is not None and usage["completion_tokens"] == 4
    assert spy.steps and spy.steps[0][0] == 1
    assert spy.intervals[0] == {settings.CHAT_BATCH_INTERVAL}
    assert loop._arriving == 0


@pytest.mark.timeout(60)
def test_a_lone_request_never_waits(engine, snapshot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Nothing else is on its way: with a 30 s gather, waiting would hit the test's timeout.
    monkeypatch.setattr(batch_module, "GATHER", 30.0)
    loop = engine_loop()
    [(usage, _)] = generate_in_threads(
        engine, [chat_request(snapshot.id, options={"temperature": 0.0, "max_tokens": 4})], [loop.expect()]
    )
    assert usage is not None and usage["completion_tokens"] == 4
    assert loop._arriving == 0


def test_the_more_answers_stream_the_less_often_each_sends_its_text(settings) -> None:  # type: ignore[no-untyped-def]
    settings.CHAT_BATCH_INTERVAL = 0.025
    assert [batch_module.delta_interval(n) for n in (0, 1, 2, 4, 8)] == [0.025, 0.025, 0.05, 0.1, 0.1]
    settings.CHAT_BATCH_INTERVAL = 0.5  # an operator's longer interval is kept, whatever the count
    assert batch_module.delta_interval(4) == 0.5
