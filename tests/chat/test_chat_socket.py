"""The chat socket end to end: a WebsocketCommunicator on the real ASGI app (origin and session checked), the
real Redis channel layer, and a REAL inference worker process running mlx-lm on the tiny model."""

from __future__ import annotations

import asyncio
import time

import pytest

from models_app.models import Conversation, Message, Node, Usage
from tests.chat.conftest import (
    assert_well_formed,
    communicator,
    deltas_text,
    receive_until_end,
    session_cookie,
)
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db(transaction=True)


async def send_and_accept(comm, **frame):  # type: ignore[no-untyped-def]
    await comm.send_json_to({"type": "chat.send", **frame})
    reply = await comm.receive_json_from(timeout=15)
    assert reply["type"] == "chat.accepted", reply
    return reply


async def first_delta(comm, request_id: str) -> tuple[list[dict], dict]:  # type: ignore[no-untyped-def]
    frames = []
    while True:
        frame = await comm.receive_json_from(timeout=60)
        if frame.get("request_id") != request_id or frame["type"] == "chat.queued":  # waiting behind another
            continue
        frames.append(frame)
        if frame["type"] == "chat.delta":
            return frames, frame
        assert frame["type"] in ("chat.started", "chat.progress"), frame


def wait_for_row(query, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = query()
        if row is not None:
            return row
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the worker to save its result")


def test_anonymous_sockets_are_closed_with_4401(run_async) -> None:  # type: ignore[no-untyped-def]
    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(None)
        connected, _ = await comm.connect()
        assert connected
        assert await comm.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
        await comm.disconnect()

    run_async(scenario())


def test_it_streams_a_reply_in_order_and_saves_it(client, alice, tiny_snapshot, inference_worker, run_async):  # type: ignore[no-untyped-def]
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        accepted = await send_and_accept(
            comm,
            content="hello there",
            snapshot_id=tiny_snapshot.id,
            options={"max_tokens": 60, "temperature": 0},
        )
        frames = await receive_until_end(comm, accepted["request_id"])
        await comm.disconnect()
        return accepted, frames

    accepted, frames = run_async(scenario())
    assert_well_formed(frames)
    deltas = [f for f in frames if f["type"] == "chat.delta"]
    assert len(deltas) >= 1
    done = frames[-1]
    assert done["type"] == "chat.done" and done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 60 and done["usage"]["prompt_tokens"] > 0
    assert done["usage"]["ttft_ms"] > 0 and done["usage"]["tokens_per_second"] > 0
    assert "worker" not in frames[0]  # internal: not forwarded to the browser

    answer = Message.objects.get(id=accepted["assistant_message_id"])
    assert answer.content == deltas_text(frames) == done["text"]
    assert answer.status == "complete" and answer.completion_tokens == 60 and answer.ttft_ms
    question = Message.objects.get(id=accepted["user_message_id"])
    assert (question.role, question.content) == ("user", "hello there")
    conversation = Conversation.objects.get(id=accepted["conversation_id"])
    assert conversation.user == alice and conversation.title == "hello there"
    assert conversation.settings == {"max_tokens": 60, "temperature": 0.0}
    usage = Usage.objects.get(request_id=accepted["request_id"])
    assert (usage.user, usage.source, usage.snapshot_id, usage.completion_tokens) == (
        alice,
        "browser",
        tiny_snapshot.id,
        60,
    )


def test_a_follow_up_turn_reuses_the_prompt_cache(client, alice, tiny_snapshot, inference_worker, run_async):  # type: ignore[no-untyped-def]
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        options = {"max_tokens": 10, "temperature": 0}
        first = await send_and_accept(
            comm, content="first question", snapshot_id=tiny_snapshot.id, options=options
        )
        one = await receive_until_end(comm, first["request_id"])
        second = await send_and_accept(comm, conversation_id=first["conversation_id"], content="and then?")
        two = await receive_until_end(comm, second["request_id"])
        await comm.disconnect()
        return one[-1]["usage"], two[-1]["usage"]

    one, two = run_async(scenario())
    assert two["cached_tokens"] >= one["prompt_tokens"]  # the whole first prompt came from the cache
    assert two["prompt_tokens"] - two["cached_tokens"] < two["prompt_tokens"] // 2


def test_stop_ends_the_generation_within_a_few_tokens(
    client, alice, slow_model_path, inference_worker, run_async
):  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("test/slow", path=slow_model_path)
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        accepted = await send_and_accept(
            comm, content="tell me a long story", snapshot_id=snapshot.id, options={"max_tokens": 4000}
        )
        before, delta = await first_delta(comm, accepted["request_id"])
        await comm.send_json_to({"type": "chat.stop", "request_id": accepted["request_id"]})
        rest = await receive_until_end(comm, accepted["request_id"])
        await comm.disconnect()
        return accepted, delta, before + rest

    accepted, delta, frames = run_async(scenario())
    assert_well_formed(frames)
    done = frames[-1]
    assert done["type"] == "chat.done" and done["finish_reason"] == "cancelled"
    # The worker polls the cancel flag every 50 ms; at ~150 tokens/s, tens of tokens at most get through.
    assert done["usage"]["completion_tokens"] - delta["tokens"] < 100
    answer = Message.objects.get(id=accepted["assistant_message_id"])
    assert answer.status == "stopped" and answer.finish_reason == "cancelled"
    assert answer.content == deltas_text(frames) != ""
    assert Usage.objects.get(request_id=accepted["request_id"]).finish_reason == "cancelled"


def test_closing_the_socket_cancels_the_generation(
    client, alice, slow_model_path, inference_worker, run_async
):  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("test/slow", path=slow_model_path)
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        accepted = await send_and_accept(
            comm, content="go on forever", snapshot_id=snapshot.id, options={"max_tokens": 4000}
        )
        _, delta = await first_delta(comm, accepted["request_id"])
        await comm.disconnect()
        return accepted, delta

    accepted, delta = run_async(scenario())
    usage = wait_for_row(lambda: Usage.objects.filter(request_id=accepted["request_id"]).first())
    assert usage.finish_reason == "cancelled"
    assert usage.completion_tokens - delta["tokens"] < 100
    answer = Message.objects.get(id=accepted["assistant_message_id"])
    assert answer.status == "stopped" and answer.content


def test_two_users_at_once_each_get_their_own_complete_stream(
    client, alice, bob, tiny_snapshot, inference_worker, run_async
):  # type: ignore[no-untyped-def]
    alice_cookie = session_cookie(client, alice)
    bob_cookie = session_cookie(client, bob)

    async def chat_as(cookie: bytes, content: str):  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        accepted = await send_and_accept(
            comm, content=content, snapshot_id=tiny_snapshot.id, options={"max_tokens": 120, "temperature": 0}
        )
        frames = await receive_until_end(comm, accepted["request_id"])
        return comm, accepted, frames

    async def scenario():  # type: ignore[no-untyped-def]
        (a_comm, a, a_frames), (b_comm, b, b_frames) = await asyncio.gather(
            chat_as(alice_cookie, "alice asks"), chat_as(bob_cookie, "bob asks")
        )
        # Bob can neither post into, regenerate, nor stop anything of Alice's.
        await b_comm.send_json_to(
            {"type": "chat.send", "conversation_id": a["conversation_id"], "content": "hi"}
        )
        peek = await b_comm.receive_json_from(timeout=10)
        await b_comm.send_json_to({"type": "chat.regenerate", "conversation_id": a["conversation_id"]})
        regen = await b_comm.receive_json_from(timeout=10)
        await b_comm.send_json_to({"type": "chat.stop", "request_id": a["request_id"]})
        stop = await b_comm.receive_json_from(timeout=10)
        await a_comm.disconnect()
        await b_comm.disconnect()
        return a, a_frames, b, b_frames, peek, regen, stop

    a, a_frames, b, b_frames, peek, regen, stop = run_async(scenario())
    for accepted, frames in ((a, a_frames), (b, b_frames)):
        assert_well_formed(frames)
        assert frames[-1]["type"] == "chat.done" and frames[-1]["usage"]["completion_tokens"] == 120
        assert {f["request_id"] for f in frames} == {accepted["request_id"]}
        assert Message.objects.get(id=accepted["assistant_message_id"]).content == deltas_text(frames)
    assert a["conversation_id"] != b["conversation_id"]
    for refused in (peek, regen, stop):
        assert refused["type"] == "chat.error" and refused["code"] == "not_found"
    assert Message.objects.filter(conversation_id=a["conversation_id"]).count() == 2  # nothing of Bob's


def test_a_model_that_fails_to_load_is_reported(
    client, alice, broken_model_path, inference_worker, run_async
):  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("test/broken", path=broken_model_path)
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        accepted = await send_and_accept(comm, content="hi", snapshot_id=snapshot.id)
        frames = await receive_until_end(comm, accepted["request_id"])
        await comm.disconnect()
        return accepted, frames

    accepted, frames = run_async(scenario())
    assert [(f["type"], f["code"]) for f in frames] == [("chat.error", "model_load_failed")]
    assert "test/broken could not be loaded" in frames[0]["message"]
    answer = Message.objects.get(id=accepted["assistant_message_id"])
    assert answer.status == "error" and "could not be loaded" in answer.error


def test_an_over_long_message_is_context_too_long(client, alice, tiny_snapshot, inference_worker, run_async):  # type: ignore[no-untyped-def]
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        accepted = await send_and_accept(comm, content="word " * 800, snapshot_id=tiny_snapshot.id)
        frames = await receive_until_end(comm, accepted["request_id"])
        await comm.disconnect()
        return frames

    frames = run_async(scenario())
    assert [(f["type"], f["code"]) for f in frames] == [("chat.error", "context_too_long")]
    assert "context window is 512 tokens" in frames[0]["message"]


def test_no_inference_worker_is_said_at_once_and_nothing_is_saved(
    client, alice, tiny_snapshot, settings, run_async
):  # type: ignore[no-untyped-def]
    # Another key prefix: this process sees no worker presence, even with the session's worker running.
    settings.REDIS_PREFIX = "mlxcr-test-no-worker"
    # A machine never seen (the session worker's reconcile may have remembered this one): no worker, rather
    # than a machine that is down (tests/downloads/test_node_state.py).
    Node.objects.all().delete()
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        await comm.send_json_to({"type": "chat.send", "content": "anyone?", "snapshot_id": tiny_snapshot.id})
        reply = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return reply

    reply = run_async(scenario())
    assert reply["type"] == "chat.error" and reply["code"] == "no_worker"
    assert "No inference worker is running" in reply["message"]
    assert not Message.objects.exists() and not Conversation.objects.exists()


def test_a_request_nobody_picks_up_fails_within_the_pickup_timeout(
    client, alice, tiny_snapshot, settings, run_async
):  # type: ignore[no-untyped-def]
    """A worker announces itself but never takes the request (a lost message, a stuck worker): the page
    hears no_worker after about two pickup timeouts instead of waiting forever."""
    from models_app.services import workers

    # No worker reads this prefix's inbox: the request waits there, unread.
    settings.REDIS_PREFIX = "mlxcr-test-ghost"
    settings.INFERENCE_PICKUP_TIMEOUT = 0.5
    workers.beat_once(hostname="ghost@nowhere", queues=["inference"], started_at=time.time())
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        await comm.connect()
        accepted = await send_and_accept(comm, content="hello?", snapshot_id=tiny_snapshot.id)
        started = time.monotonic()
        frames = await receive_until_end(comm, accepted["request_id"], timeout=10)
        await comm.disconnect()
        return accepted, frames, time.monotonic() - started

    accepted, frames, waited = run_async(scenario())
    assert [(f["type"], f["code"]) for f in frames] == [("chat.error", "no_worker")]
    assert "did not pick up" in frames[0]["message"] or "picked up" in frames[0]["message"]
    assert waited < 5
    answer = Message.objects.get(id=accepted["assistant_message_id"])
    assert answer.status == "error" and answer.finish_reason == "no_worker"


def test_the_worker_heartbeat_carries_its_backend_and_load_unload_work(tiny_snapshot, inference_worker):  # type: ignore[no-untyped-def]
    """The Load/Unload buttons' tasks, observed the way the pages see them: through the worker's heartbeat."""
    from models_app.services import inference, workers

    def reported(predicate) -> dict:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            [info] = [
                w for w in workers.workers_for_queue("inference") if w.hostname == inference_worker.hostname
            ]
            if predicate(info.extra):
                return info.extra
            time.sleep(0.2)
        raise AssertionError(f"heartbeat never matched: {info.extra}")

    extra = reported(lambda e: "mlx" in e)
    assert extra["mlx"]["device"].startswith("Device(") and extra["mlx"]["memory_limit"] > 0
    inference.request_load(tiny_snapshot.id)
    extra = reported(lambda e: any(m["snapshot_id"] == tiny_snapshot.id for m in e["loaded_models"]))
    assert tiny_snapshot.id in inference.loaded_models()
    inference.request_unload(tiny_snapshot.id)
    reported(lambda e: all(m["snapshot_id"] != tiny_snapshot.id for m in e["loaded_models"]))
