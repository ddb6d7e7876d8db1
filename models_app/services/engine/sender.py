"""Replies to the requester's channel, sent off the generation thread.

One asyncio loop per process runs in a daemon thread (realtime.loop_thread). The generation thread only appends a payload
to a deque and wakes the loop (microseconds); the loop sends them one after another with
`channel_layer.send` (a direct send: a group send drops silently when the channel is full). One loop for the
whole process means channels_redis keeps its connection pool instead of opening one per message, which is
what `async_to_sync(layer.send)` per batch would do.

The same loop reads the cancel flags of every answer the process streams, in one round trip every CANCEL_POLL
seconds (CancelWatch), so the generation loop's check is a `threading.Event.is_set()`: no Redis round trip on
the token path.
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

from models_app.realtime import LoopThread, loop_thread
from models_app.services import inference
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
        # Made here, not in the pump: an asyncio.Event binds to the loop that first waits on it, and waiting
        # for the pump to start would cost every request a round trip to the sender thread.
        self._wake = asyncio.Event()
        self._pump_future = self._runner.submit(self._pump())
        self._watch = cancel_watch() if poll_cancel else None
        # Unwatched under the same URL at close, whatever the setting says by then.
        self._redis_url = settings.REDIS_URL
        if self._watch is not None:
            self._watch.watch(cancel_key(request_id), self._redis_url, self.cancelled)

    def emit(self, type_: str, *, held: bool = False, **fields: Any) -> dict[str, Any]:
        """Queue a message for the requester. `held`: it waits for the next message that is not held (or a
        flush, or close) and goes out with it, in one channel-layer message (inference.BUNDLE), instead of
        waking the sender now."""
        payload = {"type": type_, "request_id": self.request_id, "seq": self.seq, **fields}
        self.seq += 1
        self._pending.append(payload)
        if not held:
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
        self._pending.append(_CLOSE)
        self._runner.loop.call_soon_threadsafe(self._wake_up)
        try:
            self._pump_future.result(timeout)
        except concurrent.futures.TimeoutError:
            log.warning("request %s: replies not flushed within %.0f s", self.request_id, timeout)
        if self._watch is not None:
            self._watch.unwatch(cancel_key(self.request_id), self._redis_url)

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
                payloads: list[dict[str, Any]] = []
                while self._pending and isinstance(self._pending[0], dict):
                    payloads.append(self._pending.popleft())
                if payloads:
                    await self._send(payloads)
                    continue
                marker = self._pending.popleft()
                if marker is _CLOSE:
                    return
                marker.set()  # a flush: everything before it is sent

    async def _send(self, payloads: list[dict[str, Any]]) -> None:
        """What waited, in one send: each send wakes the sender, Redis and the web process (chat.started goes
        with the first text this way: generation.Job.prepare)."""
        if self.send_error is not None:
            return
        message = payloads[0] if len(payloads) == 1 else inference.bundle(self.request_id, payloads)
        try:
            await self._layer.send(self.channel, message)
        except Exception as exc:  # ChannelFull or Redis: the reader cannot get the rest either
            log.warning("request %s: send to %s failed: %r", self.request_id, self.channel, exc)
            self.send_error = exc
            return
        if self.first_delta_sent_ns is None and any(p["type"] == "chat.delta" for p in payloads):
            self.first_delta_sent_ns = time.time_ns()


class CancelWatch:
    """The cancel flags of every answer this process streams, read in one round trip every CANCEL_POLL seconds.

    One poll per answer cost a Redis call per answer per tick: with four answers streaming, 80 calls a second,
    each waking Redis and the sender thread beside the engine's matrix products on the same cores (and a
    parallel product waits for its slowest thread). One poll for the process costs 20 a second, whatever the
    number of answers, and none while nothing streams. The watched flags are only touched on the sender loop's
    thread; other threads hand their changes to it."""

    def __init__(self, runner: LoopThread) -> None:
        self._runner = runner
        self._watched: dict[tuple[str, str], threading.Event] = {}  # (Redis URL, key) -> the answer's flag
        self._more = asyncio.Event()  # made here: see ReplyStream._wake
        self._outage_logged = False
        runner.submit(self._poll())

    def watch(self, key: str, url: str, cancelled: threading.Event) -> None:
        self._runner.loop.call_soon_threadsafe(self._add, (url, key), cancelled)

    def unwatch(self, key: str, url: str) -> None:
        self._runner.loop.call_soon_threadsafe(self._watched.pop, (url, key), None)

    def _add(self, watched: tuple[str, str], cancelled: threading.Event) -> None:
        self._watched[watched] = cancelled
        self._more.set()

    async def _poll(self) -> None:
        while True:
            if not self._watched:
                self._more.clear()
                await self._more.wait()
            # Not at once: a request was read off its queue a moment ago with its cancel flag
            # (generation._mark_picked), and a second look then only competed with it on the way to the first token.
            await asyncio.sleep(CANCEL_POLL)
            by_url: dict[str, list[str]] = {}
            for url, key in self._watched:
                by_url.setdefault(url, []).append(key)
            for url, keys in by_url.items():
                await self._look(url, keys)

    async def _look(self, url: str, keys: list[str]) -> None:
        try:
            async with _async_redis(url).pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.exists(key)
                found = await pipe.execute()
        except Exception as exc:  # Redis away: keep generating; Stop works again when it is back
            if not self._outage_logged:
                log.warning("cannot read the cancel flags of %d answer(s): %r", len(keys), exc)
                self._outage_logged = True
            return
        self._outage_logged = False
        for key, stopped in zip(keys, found, strict=True):
            if stopped:
                cancelled = self._watched.pop((url, key), None)
                if cancelled is not None:
                    cancelled.set()


_watch_lock = threading.Lock()
_watch: CancelWatch | None = None


def cancel_watch() -> CancelWatch:
    """This process's watch, on this process's sender loop (a forked child starts its own, as loop_thread)."""
    global _watch
    runner = loop_thread()
    with _watch_lock:
        if _watch is None or _watch._runner is not runner:
            _watch = CancelWatch(runner)
        return _watch
