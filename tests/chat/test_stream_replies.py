"""The web side's reader of a reply channel (the API uses it; the chat consumer uses the same ReplyWatch):
it ends at chat.done or chat.error, and never waits forever for a worker that is not there."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer

from models_app.services import inference, workers
from models_app.services import redis as app_redis


@pytest.fixture
def isolated_prefix(settings):  # type: ignore[no-untyped-def]
    """A key prefix of its own: worker presence written by other tests (or a running worker) is invisible."""
    settings.REDIS_PREFIX = f"mlxcr-test-replies-{time.monotonic_ns()}"
    return settings


async def collect(layer, channel: str, request_id: str, **kwargs) -> list[dict]:  # type: ignore[no-untyped-def]
    return [m async for m in inference.stream_replies(layer, channel, request_id, **kwargs)]


def test_it_yields_the_requests_replies_until_done(run_async, isolated_prefix) -> None:  # type: ignore[no-untyped-def]
    async def scenario():  # type: ignore[no-untyped-def]
        layer = InMemoryChannelLayer()
        channel = await layer.new_channel()
        for message in (
            {"type": "chat.started", "request_id": "r1", "seq": 0},
            {"type": "chat.delta", "request_id": "old", "seq": 5, "text": "late reply to another request"},
            {"type": "chat.delta", "request_id": "r1", "seq": 1, "text": "hi"},
            {"type": "chat.done", "request_id": "r1", "seq": 2, "text": "hi"},
            {"type": "chat.delta", "request_id": "r1", "seq": 3, "text": "never read"},
        ):
            await layer.send(channel, message)
        return await collect(layer, channel, "r1", pickup_timeout=1.0)

    assert [m["type"] for m in run_async(scenario())] == ["chat.started", "chat.delta", "chat.done"]


def test_a_bundle_is_read_as_its_replies_in_order(run_async, isolated_prefix) -> None:  # type: ignore[no-untyped-def]
    """The worker sends replies that waited together as one message (chat.started with the first text); the
    reader sees each, in order, and a chat.done inside a bundle ends the stream there."""

    async def scenario():  # type: ignore[no-untyped-def]
        layer = InMemoryChannelLayer()
        channel = await layer.new_channel()
        started = {"type": "chat.started", "request_id": "r1", "seq": 0}
        delta = {"type": "chat.delta", "request_id": "r1", "seq": 1, "text": "hi"}
        done = {"type": "chat.done", "request_id": "r1", "seq": 3, "text": "hi!"}
        after = {"type": "chat.delta", "request_id": "r1", "seq": 4, "text": "never read"}
        await layer.send(channel, inference.bundle("r1", [started, delta]))
        await layer.send(channel, inference.bundle("r1", [{**delta, "seq": 2, "text": "!"}, done, after]))
        return await collect(layer, channel, "r1", pickup_timeout=1.0)

    assert [(m["type"], m["seq"]) for m in run_async(scenario())] == [
        ("chat.started", 0),
        ("chat.delta", 1),
        ("chat.delta", 2),
        ("chat.done", 3),
    ]


def test_with_no_worker_it_ends_with_no_worker_after_the_pickup_timeout(run_async, isolated_prefix) -> None:  # type: ignore[no-untyped-def]
    async def scenario():  # type: ignore[no-untyped-def]
        layer = InMemoryChannelLayer()
        started = time.monotonic()
        replies = await collect(layer, await layer.new_channel(), "r2", pickup_timeout=0.3)
        return replies, time.monotonic() - started

    replies, waited = run_async(scenario())
    assert [(m["type"], m["code"]) for m in replies] == [("chat.error", "no_worker")]
    assert 0.3 <= waited < 3


def test_it_keeps_waiting_while_the_worker_is_busy_and_sends_keepalives(run_async, isolated_prefix) -> None:  # type: ignore[no-untyped-def]
    """Queued behind another generation is not lost: the busy worker's heartbeat says it is working."""
    workers.add_extra_provider(lambda: {"busy_since": time.time()})
    try:
        workers.beat_once(hostname="busy@host", queues=["inference"], started_at=time.time())
    finally:
        workers._extra_providers.pop()

    async def scenario():  # type: ignore[no-untyped-def]
        layer = InMemoryChannelLayer()
        channel = await layer.new_channel()
        seen = []
        async for message in inference.stream_replies(layer, channel, "r3", 0.2, keepalive=0.1):
            seen.append(message["type"])
            if seen.count("chat.keepalive") == 8:  # well past two pickup timeouts
                await layer.send(channel, {"type": "chat.done", "request_id": "r3", "seq": 0})
        return seen

    seen = run_async(scenario())
    assert seen[-1] == "chat.done" and "chat.error" not in seen


def test_a_worker_that_dies_after_pickup_is_reported(run_async, isolated_prefix) -> None:  # type: ignore[no-untyped-def]
    workers.beat_once(hostname="doomed@host", queues=["inference"], started_at=time.time())
    app_redis.client().set(inference.picked_key("r4"), "doomed@host")

    async def scenario():  # type: ignore[no-untyped-def]
        layer = InMemoryChannelLayer()
        channel = await layer.new_channel()
        await layer.send(
            channel, {"type": "chat.started", "request_id": "r4", "seq": 0, "worker": "doomed@host"}
        )
        replies = []
        async for message in inference.stream_replies(layer, channel, "r4", 0.2):
            replies.append(message)
            if message["type"] == "chat.started":
                app_redis.client().delete(app_redis.key("workers", "doomed@host"))  # its presence expires
        return replies

    replies = run_async(scenario())
    assert [m["type"] for m in replies] == ["chat.started", "chat.error"]
    assert replies[-1]["code"] == "worker_died"


def test_on_the_redis_layer_no_reply_is_lost_at_a_quiet_step_and_an_early_close_frees_the_layer(  # type: ignore[no-untyped-def]
    run_async, isolated_prefix
) -> None:
    """The real channel layer, a keepalive step (10 ms) shorter than most gaps between replies, so replies keep
    landing at step boundaries: every one arrives once, in order. A reader that stops early (a client gone)
    leaves no receive behind holding the layer's receive lock."""

    async def scenario():  # type: ignore[no-untyped-def]
        layer = get_channel_layer()
        channel = await layer.new_channel()

        async def worker() -> None:
            for seq in range(40):
                await asyncio.sleep(0.007 * (seq % 4))
                await layer.send(channel, {"type": "chat.delta", "request_id": "r5", "seq": seq, "text": "x"})
            await layer.send(channel, {"type": "chat.done", "request_id": "r5", "seq": 40})

        sending = asyncio.ensure_future(worker())
        replies = [m async for m in inference.stream_replies(layer, channel, "r5", 5.0, keepalive=0.01)]
        await sending

        other = await layer.new_channel()
        await layer.send(other, {"type": "chat.started", "request_id": "r6", "seq": 0})
        early = inference.stream_replies(layer, other, "r6", 5.0, keepalive=0.01)
        first = await early.__anext__()
        # On a loaded machine the first receive may outlast the 10 ms step: keepalives come first then.
        while first["type"] == "chat.keepalive":
            first = await early.__anext__()
        await early.aclose()  # while its next receive is pending
        await asyncio.sleep(0.05)
        return replies, first, layer.receive_count, layer.receive_lock

    replies, first, receive_count, receive_lock = run_async(scenario())
    seqs = [m["seq"] for m in replies if m["type"] != "chat.keepalive"]
    assert seqs == list(range(41))
    assert any(m["type"] == "chat.keepalive" for m in replies)  # the steps really were shorter than the gaps
    assert first["type"] == "chat.started"
    assert (receive_count, receive_lock) == (0, None)
