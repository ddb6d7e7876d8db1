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


# --- Receive ------------------------------------------------------------------------------------------------


def _commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Redis commands every asyncio client sends from now on (EVAL counts as one: one round trip)."""
    import redis.asyncio

    sent: list[str] = []
    real = redis.asyncio.Redis.execute_command

    async def counting(self, *args, **options):  # type: ignore[no-untyped-def]
        sent.append(str(args[0]).upper())
        return await real(self, *args, **options)

    monkeypatch.setattr(redis.asyncio.Redis, "execute_command", counting)
    return sent


@pytest.mark.parametrize("cls", [RedisChannelLayer, UpstreamLayer], ids=["ours", "channels_redis"])
def test_waiting_messages_come_in_order_in_one_round_trip_each(
    cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[list[int], list[str]]:
        base = settings.CHANNEL_LAYERS["default"]["CONFIG"]
        ours = cls(hosts=base["hosts"], prefix=f"t-{uuid.uuid4().hex[:8]}")
        channel = await ours.new_channel()
        for number in range(5):
            await ours.send(channel, {"type": "chat.delta", "seq": number})
        sent = _commands(monkeypatch)
        got = [(await ours.receive(channel))["seq"] for _ in range(5)]
        await ours.wait_received()  # channels_redis's cleaners
        commands = list(sent)
        monkeypatch.undo()
        await ours.flush()
        return got, commands

    got, commands = asyncio.run(scenario())
    assert got == [0, 1, 2, 3, 4]
    if cls is RedisChannelLayer:
        assert commands == ["EVAL"] * 5
    else:  # what the override saves: a script, BZPOPMIN, ZADD and ZPOPMIN per message
        assert len(commands) == 20


def test_a_receive_waiting_on_an_empty_channel_gets_what_is_sent_later_without_a_backup() -> None:
    async def scenario() -> tuple[dict, bool]:  # type: ignore[type-arg]
        ours = layer()
        channel = await ours.new_channel()
        waiting = asyncio.ensure_future(ours.receive(channel))
        await asyncio.sleep(0.1)  # it waits in BZPOPMIN by now
        assert not waiting.done()
        await ours.send(channel, {"type": "chat.delta", "seq": 0})
        message = await asyncio.wait_for(waiting, 5)
        backup = ours._backup_channel_name(ours.prefix + ours.non_local_name(channel))
        backed_up = bool(await ours.connection(0).exists(backup))
        await ours.flush()
        return message, backed_up

    message, backed_up = asyncio.run(scenario())
    assert message == {"type": "chat.delta", "seq": 0}
    assert not backed_up  # handed over with no await after the pop: nothing to keep


def test_a_message_popped_for_a_receive_that_was_cancelled_comes_with_the_next_receive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis ran the script (the message is popped), but the reader was cancelled before the answer reached
    it: the message waits in the backup, and the next receive delivers it, once, in order."""

    async def scenario() -> list[int]:
        ours = layer()
        channel = await ours.new_channel()
        for number in range(3):
            await ours.send(channel, {"type": "chat.delta", "seq": number})
        connection = ours.connection(ours.consistent_hash(channel))
        real_eval = connection.eval

        async def answer_lost(*args, **kwargs):  # type: ignore[no-untyped-def]
            await real_eval(*args, **kwargs)
            raise asyncio.CancelledError

        monkeypatch.setattr(connection, "eval", answer_lost)
        with pytest.raises(asyncio.CancelledError):
            await ours.receive(channel)
        monkeypatch.undo()
        got = [(await ours.receive(channel))["seq"] for _ in range(3)]
        await ours.send(channel, {"type": "chat.delta", "seq": 3})
        got.append((await ours.receive(channel))["seq"])
        await ours.flush()
        return got

    assert asyncio.run(scenario()) == [0, 1, 2, 3]


def test_a_receive_cancelled_while_it_waits_loses_nothing_sent_afterwards() -> None:
    async def scenario() -> list[int]:
        ours = layer()
        channel = await ours.new_channel()
        waiting = asyncio.ensure_future(ours.receive(channel))
        await asyncio.sleep(0.1)
        waiting.cancel()  # a websocket closed while its consumer waited
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await ours.send(channel, {"type": "chat.delta", "seq": 0})
        await ours.send(channel, {"type": "chat.delta", "seq": 1})
        got = [(await asyncio.wait_for(ours.receive(channel), 5))["seq"] for _ in range(2)]
        await ours.flush()
        return got

    assert asyncio.run(scenario()) == [0, 1]


def test_what_channels_redis_left_in_a_backup_is_delivered() -> None:
    """The same keys as channels_redis: a message its receive backed up and never handed over (a process that
    ran the upstream layer, say) comes first, as channels_redis's own cleanup would put it."""

    async def scenario() -> tuple[list[int], int]:
        ours = layer()
        channel = await ours.new_channel()
        key = ours.prefix + ours.non_local_name(channel)
        backup = ours._backup_channel_name(key)
        connection = ours.connection(ours.consistent_hash(channel))
        stranded = ours.serialize({"type": "chat.delta", "seq": 0, "__asgi_channel__": channel})
        await connection.zadd(backup, {stranded: time.time() - 1})
        await ours.send(channel, {"type": "chat.delta", "seq": 1})
        got = [(await ours.receive(channel))["seq"] for _ in range(2)]
        ttl = await connection.ttl(backup)
        await ours.flush()
        return got, ttl

    got, ttl = asyncio.run(scenario())
    assert got == [0, 1]
    assert 0 < ttl <= 60  # the last message's backup entry expires should no receive come to take it out
