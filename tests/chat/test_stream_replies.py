"""The web side's reader of a reply channel (the API uses it; the chat consumer uses the same ReplyWatch):
it ends at chat.done or chat.error, and never waits forever for a worker that is not there."""

from __future__ import annotations

import time

import pytest
from channels.layers import InMemoryChannelLayer

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
