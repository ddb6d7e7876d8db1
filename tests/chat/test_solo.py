"""A request that finds its model idle runs solo (engine/solo.py: mlx-lm's generate_step, cheaper per token than
a BatchGenerator of one), and moves into the model's batch, KV cache and all, the moment a second request of
that model arrives. The answers are the same tokens either way; the KV cache kept after a solo answer is the
one its tokens say."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from models_app.services.engine import solo as solo_module
from tests.chat.conftest import RecordingLayer, assert_well_formed, chat_request, deltas_text
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db(transaction=True)


class Spy:
    """Counts what the real Solo does (the methods still run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps = 0
        self.moved_after: list[int] = []
        real_next, real_into = solo_module.Solo.next, solo_module.Solo.into

        def next_(solo: Any) -> Any:
            self.steps += 1
            return real_next(solo)

        def into(solo: Any, generator: Any) -> int:
            self.moved_after.append(len(solo.generated))
            return real_into(solo, generator)

        monkeypatch.setattr(solo_module.Solo, "next", next_)
        monkeypatch.setattr(solo_module.Solo, "into", into)


class ResumeSpy:
    """Counts the answers the batch handed on to a Solo (Solo.resume still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resumed_after: list[int] = []
        real = solo_module.Solo.resume.__func__  # type: ignore[attr-defined]

        def resume(cls: Any, prepared: Any, eos: Any, cache: Any, tokens: Any) -> Any:
            solo = real(cls, prepared, eos, cache, tokens)
            if solo is not None:
                self.resumed_after.append(len(solo.generated))
            return solo

        monkeypatch.setattr(solo_module.Solo, "resume", classmethod(resume))


def answer(engine, snapshot_id: int, content: str, max_tokens: int, layer: RecordingLayer | None = None):  # type: ignore[no-untyped-def]
    layer = layer or RecordingLayer()
    request = chat_request(
        snapshot_id,
        [{"role": "user", "content": content}],
        options={"temperature": 0.0, "max_tokens": max_tokens},
    )
    usage = engine.generate(request, layer=layer)
    messages = layer.messages(request["request_id"])
    assert_well_formed(messages)
    return usage, messages


@pytest.fixture
def snapshot(long_context_model_path):  # type: ignore[no-untyped-def]
    return make_snapshot("test/solo", path=long_context_model_path)


def test_a_lone_request_runs_solo(engine, snapshot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A model never measured goes batched first: its prompt speed decides what fits in one model call.
    answer(engine, snapshot.id, "a first question", 4)
    spy = Spy(monkeypatch)
    usage, messages = answer(engine, snapshot.id, "tell me a story", 40)
    assert usage is not None and usage["completion_tokens"] == 40
    assert spy.steps == 40 and spy.moved_after == []
    assert len(deltas_text(messages)) > 0


def test_a_second_request_moves_the_solo_into_the_batch_mid_answer_and_back_on_solo_after_and_no_token_changes(
    engine, snapshot, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    first_prompt, second_prompt = "the first question, with a long answer", "a second question"
    answer(engine, snapshot.id, "a warm-up", 4)  # the model's prompt speed, measured
    _, alone_first = answer(engine, snapshot.id, first_prompt, 300)
    _, alone_second = answer(engine, snapshot.id, second_prompt, 40)
    engine.state().prompt_cache.clear()  # the same prompts, processed from scratch again

    spy, resumed = Spy(monkeypatch), ResumeSpy(monkeypatch)
    layer = RecordingLayer()
    results: dict[str, Any] = {}
    first = threading.Thread(
        target=lambda: results.update(first=answer(engine, snapshot.id, first_prompt, 300, layer))
    )
    first.start()
    deadline = time.monotonic() + 30
    while not any(m["type"] == "chat.delta" for _, m in layer.sent) and time.monotonic() < deadline:
        time.sleep(0.001)
    results["second"] = answer(engine, snapshot.id, second_prompt, 40)
    first.join(60)

    assert len(spy.moved_after) == 1 and spy.moved_after[0] > 0  # moved mid-answer, after some tokens
    assert spy.moved_after[0] < 300
    # Once the second answer (40 tokens) ended, the first went on solo again (Solo.resume).
    assert len(resumed.resumed_after) == 1 and spy.moved_after[0] + 30 < resumed.resumed_after[0] < 300
    assert deltas_text(results["first"][1]) == deltas_text(alone_first)
    assert deltas_text(results["second"][1]) == deltas_text(alone_second)
    assert results["first"][0]["completion_tokens"] == 300


def test_a_lone_answer_that_began_batched_goes_on_solo_after_its_prompt_and_no_token_changes(
    engine, snapshot, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from models_app.services.engine import batch as batch_module

    prompt = "a long question whose prompt is processed in the batch's chunks"
    answer(engine, snapshot.id, "a warm-up", 4)
    # As a prompt too long for one model call: it starts in the batch (paced chunks).
    monkeypatch.setattr(batch_module, "can_go_solo", lambda prepared, step: False)
    with monkeypatch.context() as batched_only:
        batched_only.setattr(batch_module._ModelBatch, "_last_goes_solo", lambda self: None)
        batched_usage, batched = answer(engine, snapshot.id, prompt, 120)
    engine.state().prompt_cache.clear()

    spy, steps = ResumeSpy(monkeypatch), Spy(monkeypatch)
    usage, messages = answer(engine, snapshot.id, prompt, 120)

    assert spy.resumed_after == [1]  # on solo from its first token on
    assert steps.steps == 119  # every other token came from generate_step
    assert deltas_text(messages) == deltas_text(batched)
    assert usage["completion_tokens"] == batched_usage["completion_tokens"] == 120
    # The KV cache kept for the next turn holds what the tokens say: the same question again is all cached.
    again, _ = answer(engine, snapshot.id, prompt, 4)
    assert again["cached_tokens"] == again["prompt_tokens"] - 1


def test_an_answer_that_cannot_go_on_solo_is_asked_once_not_every_step(engine, snapshot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A cache that cannot drop its last token (Solo.resume says None) stays batched to the end; taking its
    cache out of the batch to ask again would cost every step."""
    from models_app.services.engine import batch as batch_module

    answer(engine, snapshot.id, "a warm-up", 4)
    monkeypatch.setattr(batch_module, "can_go_solo", lambda prepared, step: False)
    asked: list[int] = []
    monkeypatch.setattr(
        solo_module.Solo, "resume", classmethod(lambda cls, prepared, eos, cache, tokens: asked.append(1))
    )
    usage, messages = answer(engine, snapshot.id, "a question that stays batched", 60)
    assert usage is not None and usage["completion_tokens"] == 60
    assert asked == [1]
    assert deltas_text(messages)
