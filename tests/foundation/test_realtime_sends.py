"""realtime.group_send from sync code (a download's progress, five times a second) goes out on one kept
event loop per process, over the real Redis channel layer: `async_to_sync` made a loop, so a Redis
connection, for every message (3.3 ms of CPU a send, where the kept loop costs 0.4)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from models_app import realtime


@pytest.fixture
def loops_used(monkeypatch) -> list[asyncio.AbstractEventLoop]:
    layer = get_channel_layer()
    send = layer.group_send
    loops: list[asyncio.AbstractEventLoop] = []

    async def recording(group: str, message: dict[str, Any]) -> None:
        loops.append(asyncio.get_running_loop())
        await send(group, message)

    monkeypatch.setattr(layer, "group_send", recording)
    return loops


def test_sends_from_sync_code_share_one_loop_and_arrive_in_order(loops_used) -> None:
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)("test-realtime", channel)

    for n in range(5):
        realtime.group_send("test-realtime", {"type": "test.message", "n": n})

    async def receive_five() -> list[int]:
        return [(await layer.receive(channel))["n"] for _ in range(5)]

    received = async_to_sync(receive_five)()
    assert received == [0, 1, 2, 3, 4]
    assert len(loops_used) == 5 and len(set(map(id, loops_used))) == 1
    assert loops_used[0] is realtime.loop_thread().loop


def test_a_send_from_the_loop_thread_itself_does_not_wait_on_itself(loops_used) -> None:
    done = threading.Event()

    async def from_the_loop() -> None:
        realtime.group_send("test-realtime-self", {"type": "test.message"})
        done.set()

    realtime.loop_thread().submit(from_the_loop()).result(timeout=5)

    assert done.is_set()


def test_redis_away_costs_a_warning_not_the_work(loops_used, settings, caplog, monkeypatch) -> None:
    async def refused(group: str, message: dict[str, Any]) -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(get_channel_layer(), "group_send", refused)

    realtime.group_send("test-realtime", {"type": "test.message"})

    assert "realtime group_send to test-realtime failed: Redis is away" in caplog.text
