"""Multi-turn: a follow-up turn processes its new message only. The previous answer keeps the token ids the
model wrote it in (re-encoding its text gives other ids, so the prompt would part from the KV cache inside the
answer and the answer would go through the model again). Proved on the real inference worker over the chat
socket, and against a cold worker: the same five turns with the model unloaded after each answer (so no cache
at all) give the same answers at temperature 0."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from devkit.processes import wait_for
from models_app.models import Message
from models_app.services import inference
from tests.chat.conftest import communicator, receive_until_end, session_cookie
from tests.chat.test_chat_socket import send_and_accept

pytestmark = pytest.mark.django_db(transaction=True)

QUESTIONS = [
    "the quick brown fox",
    "jumps over the lazy dog",
    "while a robot reads",
    "a tiny book about the sea",
    "and then what happens?",
]


def play(run_async, cookie: bytes, snapshot_id: int, options: dict[str, Any]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Five turns of one conversation over one socket; each turn's chat.started and chat.done."""

    async def scenario() -> list[dict[str, Any]]:
        comm = communicator(cookie)
        await comm.connect()
        turns: list[dict[str, Any]] = []
        conversation: dict[str, Any] = {"snapshot_id": snapshot_id}
        for question in QUESTIONS:
            accepted = await send_and_accept(comm, content=question, options=options, **conversation)
            conversation = {"conversation_id": accepted["conversation_id"]}
            frames = await receive_until_end(comm, accepted["request_id"])
            assert frames[-1]["type"] == "chat.done", frames[-1]
            started = next(f for f in frames if f["type"] == "chat.started")
            turns.append(
                {"started": started, "done": frames[-1], "answer_id": accepted["assistant_message_id"]}
            )
        await comm.disconnect()
        return turns

    return run_async(scenario())


def test_five_turns_reuse_every_previous_exchange_and_answer_as_a_cold_worker_does(
    client, alice, tiny_snapshot, inference_worker, run_async
):  # type: ignore[no-untyped-def]
    cookie = session_cookie(client, alice)
    warm = play(run_async, cookie, tiny_snapshot.id, {"max_tokens": 12, "temperature": 0})
    for number, (before, turn) in enumerate(itertools.pairwise(warm), start=1):
        usage, previous = turn["done"]["usage"], before["done"]["usage"]
        # The whole previous exchange, its answer as generated, came from the cache.
        assert usage["cached_tokens"] == previous["prompt_tokens"] + previous["completion_tokens"]
        assert turn["started"]["cached_tokens"] == usage["cached_tokens"]
        # What went through the model: the new message and the template's few tokens around it.
        assert usage["prompt_tokens"] - usage["cached_tokens"] <= len(QUESTIONS[number]) + 12
    # The latest answer keeps its ids (the next turn starts with them); earlier ones were let go.
    last = Message.objects.get(id=warm[-1]["answer_id"])
    usage = warm[-1]["done"]["usage"]
    assert len(last.turn_tokens["ids"]) == usage["prompt_tokens"] + usage["completion_tokens"]
    assert Message.objects.filter(turn_tokens__isnull=False).count() == 1

    # Unloading drops the model's prompt cache. The unload goes through Celery and a message through the
    # worker's Redis intake, which is faster: the cold turns wait until the worker says the model is gone
    # (CI saw turn 1 reuse 21 cached tokens once the message's way got a few milliseconds shorter).
    # keep_alive 0 then unloads the model after each answer: every turn is cold.
    wait_for(
        lambda: tiny_snapshot.id in inference.loaded_models(), 30, "no heartbeat said the model was loaded"
    )
    inference.request_unload(tiny_snapshot.id)
    wait_for(lambda: tiny_snapshot.id not in inference.loaded_models(), 30, "the model was never unloaded")
    cold = play(run_async, cookie, tiny_snapshot.id, {"max_tokens": 12, "temperature": 0, "keep_alive": 0})
    assert [t["done"]["usage"]["cached_tokens"] for t in cold] == [0] * len(QUESTIONS)
    assert [t["done"]["usage"]["prompt_tokens"] for t in cold] == [
        t["done"]["usage"]["prompt_tokens"] for t in warm
    ]
    assert [t["done"]["text"] for t in cold] == [t["done"]["text"] for t in warm]
    assert all(t["done"]["usage"]["completion_tokens"] for t in warm)
