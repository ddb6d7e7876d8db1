"""The worker's reply sender. The first answer text is handed to the channel layer before the token loop goes
on: the sender runs in another thread of the same process, and while the generation thread computes tokens
it got the GIL only now and then (the first delta reached the web process 30-46 ms after it was emitted on a
loaded 2-core machine, most of the time to first token)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from models_app.services.engine.sender import ReplyStream


class SlowLayer:
    """A channel layer whose sends take a while (or forever): what was sent, in order."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.sent: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        if self.delay is None:
            await asyncio.Event().wait()  # never
        await asyncio.sleep(self.delay)
        with self._lock:
            self.sent.append(json.loads(json.dumps(message)))


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
