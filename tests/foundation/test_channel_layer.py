"""The channel layer's send (dashboard/channel_layer.py): one Redis round trip, the same outcome as
channels_redis's four commands: delivered in order, ChannelFull at capacity, old messages dropped."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer as UpstreamLayer
from django.conf import settings

from dashboard.channel_layer import RedisChannelLayer


def layer(**config) -> RedisChannelLayer:  # type: ignore[no-untyped-def]
    base = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    return RedisChannelLayer(hosts=base["hosts"], prefix=f"test-layer-{uuid.uuid4().hex[:8]}", **config)


def test_the_product_uses_it() -> None:
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "dashboard.channel_layer.RedisChannelLayer"


def test_messages_arrive_in_order_on_a_process_local_channel_and_a_general_one() -> None:
    async def scenario() -> tuple[list[int], dict]:  # type: ignore[type-arg]
        ours = layer()
        channel = await ours.new_channel()
        for number in range(5):
            await ours.send(channel, {"type": "chat.delta", "seq": number})
        got = [(await ours.receive(channel))["seq"] for _ in range(5)]
        await ours.send("general", {"type": "x", "n": 1})
        general = await ours.receive("general")
        await ours.flush()
        return got, general

    got, general = asyncio.run(scenario())
    assert got == [0, 1, 2, 3, 4]
    assert general == {"type": "x", "n": 1}


def test_a_full_channel_refuses_as_channels_redis_does() -> None:
    async def scenario(cls: type) -> int:
        full = cls(
            hosts=settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"], prefix=f"t-{uuid.uuid4().hex[:8]}"
        )
        full.capacity = 3
        channel = await full.new_channel()
        sent = 0
        for number in range(5):
            try:
                await full.send(channel, {"type": "m", "n": number})
                sent += 1
            except ChannelFull:
                break
        await full.flush()
        return sent

    assert asyncio.run(scenario(RedisChannelLayer)) == asyncio.run(scenario(UpstreamLayer)) == 3


def test_messages_past_the_expiry_are_dropped_before_counting(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> int:
        ours = layer(expiry=60, capacity=2)
        channel = await ours.new_channel()
        await ours.send(channel, {"type": "old", "n": 0})
        await ours.send(channel, {"type": "old", "n": 1})
        later = time.time() + 120  # both are past the expiry now: room for new ones
        monkeypatch.setattr(time, "time", lambda: later)
        await ours.send(channel, {"type": "new", "n": 2})
        message = await ours.receive(channel)
        await ours.flush()
        return message["n"]

    assert asyncio.run(scenario()) == 2
