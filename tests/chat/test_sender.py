"""The worker's reply sender. The first answer text is handed to the channel layer before the token loop goes
on: the sender runs in another thread of the same process, and while the generation thread computes tokens
it got the GIL only now and then (the first delta reached the web process 30-46 ms after it was emitted on a
loaded 2-core machine, most of the time to first token). The cancel flags of all answers are read in one
round trip per tick, against the tests' real Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import pytest

from models_app.services import inference
from models_app.services.engine import sender
from models_app.services.engine.sender import CANCEL_POLL, ReplyStream


class SlowLayer:
    """A channel layer whose sends take a while (or forever): what was sent, in order (a bundle's replies
    each in its place)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.sent: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self.delay is None:
            await asyncio.Event().wait()  # never
        await asyncio.sleep(self.delay)
        with self._lock:
            self.sent.extend(inference.unbundle(json.loads(json.dumps(message))))


def test_flush_returns_once_everything_emitted_was_sent() -> None:
    layer = SlowLayer(0.05)
    stream = ReplyStream(channel="test.reply!x", request_id="r1", layer=layer, poll_cancel=False)
    stream.emit("chat.started", prompt_tokens=3)
    stream.emit("chat.delta", text="Hello", tokens=1)
    assert stream.flush()
    assert [m["type"] for m in layer.sent] == ["chat.started", "chat.delta"]
    stream.emit("chat.done", text="Hello")
    stream.close()
    assert [m["seq"] for m in layer.sent] == [0, 1, 2]


def test_flush_gives_up_on_a_layer_that_hangs() -> None:
    layer = SlowLayer(None)
    stream = ReplyStream(channel="test.reply!x", request_id="r2", layer=layer, poll_cancel=False)
    stream.emit("chat.delta", text="Hello", tokens=1)
    assert stream.flush(timeout=0.2) is False  # the generation goes on; close() reports what was not sent
    stream.close(timeout=0.2)


def _text(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


class CountedRedis:
    """The sender's real Redis client, with the keys each round trip of the cancel watch asked about."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.looks: list[set[str]] = []
        self._lock = threading.Lock()

    def pipeline(self, **kwargs: Any) -> Any:
        pipe = self._client.pipeline(**kwargs)
        real_execute = pipe.execute

        async def execute() -> Any:
            with self._lock:
                self.looks.append({_text(args[1]) for args, _options in pipe.command_stack})
            return await real_execute()

        pipe.execute = execute
        return pipe

    def seen(self) -> list[set[str]]:
        with self._lock:
            return list(self.looks)


def test_the_cancel_flags_of_all_answers_are_read_in_one_round_trip_per_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = sender._async_redis
    counted: dict[str, CountedRedis] = {}
    monkeypatch.setattr(sender, "_async_redis", lambda url: counted.setdefault(url, CountedRedis(real(url))))
    ids = [f"watch-{uuid.uuid4().hex}" for _ in range(3)]
    keys = {sender.cancel_key(request_id) for request_id in ids}
    streams = [
        ReplyStream(channel="test.reply!w", request_id=request_id, layer=SlowLayer(0)) for request_id in ids
    ]
    try:
        time.sleep(CANCEL_POLL * 6)
        (client,) = counted.values()
        ours = [look for look in client.seen() if look & keys]
        assert len(ours) >= 3
        assert all(keys <= look for look in ours)  # every look asked about the three at once
        assert not any(stream.cancelled.is_set() for stream in streams)

        inference.cancel_generation(ids[1])  # Stop on the second answer only
        assert streams[1].cancelled.wait(CANCEL_POLL * 40)
        time.sleep(CANCEL_POLL * 3)
        assert not streams[0].cancelled.is_set() and not streams[2].cancelled.is_set()
        stopped = sender.cancel_key(ids[1])
        latest = [look for look in client.seen() if look & keys][-1]
        assert stopped not in latest and keys - {stopped} <= latest  # a flag that was found is not read again
    finally:
        for stream in streams:
            stream.close()
    time.sleep(CANCEL_POLL * 2)  # a look already under way may finish
    before = len([look for look in client.seen() if look & keys])
    time.sleep(CANCEL_POLL * 6)
    assert len([look for look in client.seen() if look & keys]) == before  # closed answers are not read


def test_a_held_message_goes_out_with_the_next_one_in_one_send() -> None:
    layer = SlowLayer(0)
    raw: list[dict[str, Any]] = []
    real_send = layer.send

    async def send(channel: str, message: dict[str, Any]) -> None:
        raw.append(message)
        await real_send(channel, message)

    layer.send = send  # type: ignore[method-assign]
    stream = ReplyStream(channel="test.reply!h", request_id="r3", layer=layer, poll_cancel=False)
    stream.emit("chat.started", held=True, prompt_tokens=3)
    time.sleep(CANCEL_POLL)  # nothing woke the sender
    assert raw == []
    stream.emit("chat.delta", text="Hello", tokens=1)
    assert stream.flush()
    assert [m["type"] for m in raw] == [inference.BUNDLE]
    assert [(m["type"], m["seq"]) for m in layer.sent] == [("chat.started", 0), ("chat.delta", 1)]
    stream.emit("chat.progress", held=True, processed=1, total=2)
    stream.close()  # what is held goes out at the end, too
    assert [(m["type"], m["seq"]) for m in layer.sent][-1] == ("chat.progress", 2)


def test_a_closed_answer_leaves_the_watch_though_the_redis_url_changed_meanwhile(settings) -> None:  # type: ignore[no-untyped-def]
    """The answer is unwatched under the Redis URL it was watched under, not whatever the setting says at close
    (tests switch it; a stale entry would be read every tick for the rest of the process)."""
    request_id = f"url-{uuid.uuid4().hex}"
    entry = (settings.REDIS_URL, sender.cancel_key(request_id))
    watch = sender.cancel_watch()

    async def look() -> bool:
        return entry in watch._watched

    def watched() -> bool:
        # Read on the sender loop's thread, after the (un)watch calls queued there before it: no sleeping.
        return watch._runner.submit(look()).result(5)

    stream = ReplyStream(channel="test.reply!u", request_id=request_id, layer=SlowLayer(0))
    assert watched()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # another server, from now on
    stream.close()
    assert not watched()
