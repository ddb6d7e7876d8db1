"""Replies to the requester's channel, sent off the generation thread.

One asyncio loop per process runs in a daemon thread (realtime.loop_thread). The generation thread only appends a payload
to a deque and wakes the loop (microseconds); the loop sends them one after another with
`channel_layer.send` (a direct send: a group send drops silently when the channel is full). One loop for the
whole process means channels_redis keeps its connection pool instead of opening one per message, which is
what `async_to_sync(layer.send)` per batch would do.

The same loop polls the request's cancel flag in Redis every CANCEL_POLL seconds, so the generation loop's
check is a `threading.Event.is_set()`: no Redis round trip on the token path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections import deque
from typing import Any

import redis.asyncio as aioredis
from channels.layers import get_channel_layer
from django.conf import settings

from models_app.realtime import loop_thread
from models_app.services import redis as app_redis

log = logging.getLogger(__name__)

CANCEL_POLL = 0.05
# A flush waits no longer than this for a slow Redis: the answer goes on, and close() reports what was lost.
FLUSH_TIMEOUT = 1.0
_CLOSE = object()


@functools.cache
def _async_redis(url: str) -> aioredis.Redis:
    # Only ever used from the sender loop's thread, so one client per URL is safe.
    return aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def cancel_key(request_id: str) -> str:
    return app_redis.key("cancel", request_id)


class ReplyStream:
    """The messages of one request: `seq` from 0 with no gaps, delivered in order."""

    def __init__(self, *, channel: str, request_id: str, layer: Any = None, poll_cancel: bool = True) -> None:
        self.channel = channel
        self.request_id = request_id
        self.seq = 0
        self.cancelled = threading.Event()
        # Set when a send fails (channel full: the reader is gone or stuck; Redis down). The loop stops then.
        self.send_error: Exception | None = None
        # When the first chat.delta was handed to the channel layer (time_ns): the request's first_sent hop.
        self.first_delta_sent_ns: int | None = None
        self._layer = layer if layer is not None else get_channel_layer()
        self._pending: deque[Any] = deque()
        self._runner = loop_thread()
        self._closing = False
        # Made here, not in the pump: an asyncio.Event binds to the loop that first waits on it, and waiting
        # for the pump to start would cost every request a round trip to the sender thread.
        self._wake = asyncio.Event()
        self._pump_future = self._runner.submit(self._pump())
        self._poll_future = (
            self._runner.submit(self._poll_cancel(cancel_key(request_id), settings.REDIS_URL))
            if poll_cancel
            else None
        )

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        payload = {"type": type_, "request_id": self.request_id, "seq": self.seq, **fields}
        self.seq += 1
        self._pending.append(payload)
        self._runner.loop.call_soon_threadsafe(self._wake_up)
        return payload

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until everything emitted so far was handed to the channel layer (or failed); False after
        `timeout`. The generation thread waits here once, after the first answer text: waiting releases the
        GIL, so the sender sends at once instead of between the token loop's turns with it."""
        done = threading.Event()
        self._pending.append(done)
        self._runner.loop.call_soon_threadsafe(self._wake_up)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Wait until everything emitted was sent (or failed), and stop polling."""
        self._closing = True
        self._pending.append(_CLOSE)
        self._runner.loop.call_soon_threadsafe(self._wake_up)
        try:
            self._pump_future.result(timeout)
        except concurrent.futures.TimeoutError:
            log.warning("request %s: replies not flushed within %.0f s", self.request_id, timeout)
        if self._poll_future is not None:
            self._poll_future.cancel()

    @property
    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.send_error is not None

    def _wake_up(self) -> None:
        self._wake.set()

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                payload = self._pending.popleft()
                if payload is _CLOSE:
                    return
                if isinstance(payload, threading.Event):  # a flush: everything before it is sent
                    payload.set()
                    continue
                if self.send_error is not None:
                    continue
                try:
                    await self._layer.send(self.channel, payload)
                    if self.first_delta_sent_ns is None and payload["type"] == "chat.delta":
                        self.first_delta_sent_ns = time.time_ns()
                except Exception as exc:  # ChannelFull or Redis: the reader cannot get the rest either
                    log.warning("request %s: send to %s failed: %r", self.request_id, self.channel, exc)
                    self.send_error = exc

    async def _poll_cancel(self, key: str, url: str) -> None:
        client = _async_redis(url)
        warned = False
        while not self._closing:
            # Not at once: the request was read off its queue a moment ago with its cancel flag
            # (generation._mark_picked), and a second look then only competed with it on the way to the first token.
            await asyncio.sleep(CANCEL_POLL)
            try:
                if await client.exists(key):
                    self.cancelled.set()
                    return
            except Exception as exc:  # Redis away: keep generating; Stop works again when it is back
                if not warned:
                    log.warning("request %s: cannot read the cancel flag: %r", self.request_id, exc)
                    warned = True
