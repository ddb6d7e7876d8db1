"""Stop during a long prompt. mlx-lm feeds a prompt in fixed chunks and can only stop between them: a 512-token
chunk took 63 s on a slow CPU model, and Stop (and the next user) waited that long. The engine now paces its
chunks by the model's measured prompt speed. The pacing is proved on a simulated clock (any machine speed);
the real worker on the slow model shows the wiring: small first chunks, and Stop ends the prompt."""

from __future__ import annotations

import time

import pytest

from models_app.models import Message
from models_app.services.engine.prefill import CHUNK_SECONDS, MAX_STEP, MIN_STEP, PrefillPace, prefill
from tests.chat.conftest import communicator, receive_until_end, session_cookie
from tests.factories import make_snapshot


class StopRequested(Exception):
    pass


class SimulatedModel:
    """A model that takes `seconds_per_token` per prompt token, and `seconds_per_call` more per call (the
    weights read, the kernels launched), on a simulated clock."""

    def __init__(self, seconds_per_token: float, seconds_per_call: float = 0.0) -> None:
        self.now = 0.0
        self.seconds_per_token = seconds_per_token
        self.seconds_per_call = seconds_per_call
        self.chunks: list[int] = []

    def clock(self) -> float:
        return self.now

    def forward(self, chunk: list[int]) -> None:
        self.chunks.append(len(chunk))
        self.now += self.seconds_per_call + len(chunk) * self.seconds_per_token


@pytest.mark.parametrize("tokens_per_second", [8, 150, 5_000, 500_000])
def test_each_chunk_takes_about_the_target_time_on_any_machine(tokens_per_second: int) -> None:
    model = SimulatedModel(1 / tokens_per_second)
    pace = PrefillPace()
    done = prefill(model.forward, list(range(3000)), pace, after_chunk=lambda *_: None, clock=model.clock)
    assert done.tokens == 2999  # the last token is left for the generation step
    durations = [n / tokens_per_second for n in model.chunks]
    # After the first (small, unmeasured) chunk, no chunk is longer than twice the target, or than the
    # fewest tokens worth a model call; on a fast machine chunks reach the largest size, so pacing costs
    # nothing there.
    assert max(durations[1:]) <= max(2 * CHUNK_SECONDS, MIN_STEP / tokens_per_second)
    assert durations[0] <= 2.0
    if tokens_per_second * CHUNK_SECONDS >= MAX_STEP:
        assert model.chunks[1:-1] and set(model.chunks[1:-1]) == {MAX_STEP}
    # A later prompt on the same loaded model starts at the measured pace at once.
    model.chunks.clear()
    prefill(model.forward, list(range(1000)), pace, after_chunk=lambda *_: None, clock=model.clock)
    assert model.chunks[0] / tokens_per_second <= max(2 * CHUNK_SECONDS, MIN_STEP / tokens_per_second)


def test_a_slow_models_prompt_is_not_cut_into_calls_that_cost_more_than_they_save() -> None:
    """The SmolLM2-135M shape on this CPU: ~8 prompt tokens/s, and each model call costs about half a token
    more. Paced to 0.25 s, the chunks shrank to 1-2 tokens (each call's fixed cost lowering the measured
    speed, which shrank the next chunk): a 100-token prompt ran in ~99 calls, their fixed costs adding half
    the tokens' own time, and the product's first token came 1.34x later than mlx_lm.server's (one pass)."""
    model = SimulatedModel(1 / 8, seconds_per_call=0.5 / 8)
    pace = PrefillPace()
    for _ in range(3):  # the pace remembered from earlier prompts, as on a loaded model
        model.chunks.clear()
        prefill(model.forward, list(range(100)), pace, after_chunk=lambda *_: None, clock=model.clock)
    calls = len(model.chunks)
    assert min(model.chunks[:-1]) >= MIN_STEP
    assert calls * model.seconds_per_call <= 0.1 * 99 * model.seconds_per_token, model.chunks


def test_stop_is_noticed_within_one_paced_chunk_on_a_slow_machine() -> None:
    """The issue's case: ~8 prompt tokens/s, Stop 6 s into a 950-token prompt. A fixed 512-token chunk ran
    63 s more; a paced one ends within about CHUNK_SECONDS."""
    model = SimulatedModel(1 / 8)
    stop_at = 6.0

    def after_chunk(processed: int, total: int) -> None:
        if model.now >= stop_at:
            raise StopRequested

    with pytest.raises(StopRequested):
        prefill(model.forward, list(range(950)), PrefillPace(), after_chunk=after_chunk, clock=model.clock)
    assert model.now - stop_at <= 2 * CHUNK_SECONDS + 2.0  # at worst the one chunk under way at 6 s


@pytest.mark.django_db(transaction=True)
def test_stop_during_a_long_prompt_on_the_real_worker(
    client, alice, slow_model_path, inference_worker, run_async
):  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("test/slow", path=slow_model_path)
    cookie = session_cookie(client, alice)
    prompt = " ".join(["tell me about the blue sea and the old ship"] * 150)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        await comm.send_json_to(
            {"type": "chat.send", "content": prompt, "snapshot_id": snapshot.id, "options": {"max_tokens": 8}}
        )
        accepted = await comm.receive_json_from(timeout=15)
        assert accepted["type"] == "chat.accepted", accepted
        frames = []
        while True:
            frame = await comm.receive_json_from(timeout=120)
            frames.append(frame)
            if frame["type"] == "chat.progress":
                break
            assert frame["type"] == "chat.started", frame
        stop_sent = time.monotonic()
        await comm.send_json_to({"type": "chat.stop", "request_id": accepted["request_id"]})
        frames += await receive_until_end(comm, accepted["request_id"])
        stopped_after = time.monotonic() - stop_sent
        await comm.disconnect()
        return accepted, frames, stopped_after

    accepted, frames, stopped_after = run_async(scenario())
    started = next(f for f in frames if f["type"] == "chat.started")
    progress = next(f for f in frames if f["type"] == "chat.progress")
    print(f"prompt {started['prompt_tokens']} tokens; Stop answered after {stopped_after:.2f} s")
    # Paced chunks: the first progress report comes long before a fixed 512-token chunk would end.
    assert started["prompt_tokens"] > 1000
    assert progress["processed"] < min(512, started["prompt_tokens"] // 4)
    done = frames[-1]
    assert done["type"] == "chat.done" and done["finish_reason"] == "cancelled", done
    assert not [f for f in frames if f["type"] == "chat.delta"]
    assert Message.objects.get(id=accepted["assistant_message_id"]).status == "stopped"
