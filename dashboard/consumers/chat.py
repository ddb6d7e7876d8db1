"""The chat page's socket: `ws/chat/`.

Client → server: {"type": "chat.send", "conversation_id"?, "content", "snapshot_id"?, "options"?,
"system_prompt"?}, {"type": "chat.stop", "request_id"}, {"type": "chat.regenerate", "conversation_id"}.
Server → client: chat.accepted (ids of the saved messages), then the worker's chat.started / chat.progress /
chat.delta / chat.done / chat.error, forwarded as they come; the worker sends them straight to this
consumer's channel. Errors of the client's own making come back as chat.error without a seq. While an
answer waits for the worker, chat.queued {ahead} (seq -1) tells its place in line when it changes.

Thin: the work is in models_app.services.chat; this checks the user, forwards, and watches for a worker
that never answers (chat.error no_worker / worker_died within INFERENCE_PICKUP_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from dashboard.consumers.client_gone import ClientGoneMixin
from dashboard.consumers.session import UNAUTHENTICATED, SessionBoundMixin
from models_app.services import chat, inference, inflight


class ChatConsumer(ClientGoneMixin, SessionBoundMixin, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.watches: dict[str, inference.ReplyWatch] = {}
        self.leases: dict[str, inflight.Lease] = {}  # the user's slots of this socket's answers in flight
        self.queues: dict[str, str] = {}  # the queue each answer waits in, until the worker takes it
        self.places: dict[str, int] = {}  # the place in line last told to the page
        self.watchdog: asyncio.Task | None = None
        user = self.scope.get("user")
        # Accept, then close with a code the page understands (a refused handshake carries no code).
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=UNAUTHENTICATED)
            return
        if await self.join_session():  # closed at logout
            self.user = user

    async def disconnect(self, code: int) -> None:
        await self.leave_session()
        if self.watchdog is not None:
            self.watchdog.cancel()
        # Nobody will read the rest of these answers: stop them (the worker saves what it has).
        for request_id in list(self.watches):
            await sync_to_async(chat.cancel_quietly, thread_sensitive=False)(request_id)
        self.watches.clear()
        for lease in self.leases.values():
            inflight.release_soon(lease)
        self.leases.clear()

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        # A frame that is not JSON text is the client's mistake: say so and keep the socket open (channels'
        # own decoding raises, which drops the connection with a traceback in the log).
        if not hasattr(self, "user"):
            return
        self.received_ns = time.time_ns()  # the request's first hop (inference.stamp_hop)
        if text_data is None:
            await self._error("invalid_request", "Frames must be JSON text, not binary.")
            return
        try:
            content = await self.decode_json(text_data)
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            await self._error("invalid_request", "The frame is not valid JSON.")
            return
        await self.receive_json(content, **kwargs)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        handler = {
            "chat.send": self._send_message,
            "chat.regenerate": self._regenerate,
            "chat.stop": self._stop,
        }.get(kind)
        if handler is None:
            await self._error("invalid_request", "Unknown message type.")
            return
        try:
            await handler(content)
        except chat.ChatError as exc:
            await self._error(exc.code, exc.message, request_id=content.get("request_id"))

    async def _send_message(self, content: dict[str, Any]) -> None:
        started = await database_sync_to_async(chat.post_message)(
            user=self.user,
            conversation_id=content.get("conversation_id"),
            content=content.get("content"),
            reply_channel=self.channel_name,
            snapshot_id=content.get("snapshot_id"),
            options=content.get("options"),
            system_prompt=content.get("system_prompt"),
            hops={"received": self.received_ns},
        )
        await self._accepted(started)

    async def _regenerate(self, content: dict[str, Any]) -> None:
        started = await database_sync_to_async(chat.regenerate)(
            user=self.user,
            conversation_id=content.get("conversation_id"),
            reply_channel=self.channel_name,
            options=content.get("options"),
        )
        await self._accepted(started)

    async def _stop(self, content: dict[str, Any]) -> None:
        if not await database_sync_to_async(chat.stop)(user=self.user, request_id=content.get("request_id")):
            raise chat.ChatError("not_found", "There is no answer being generated to stop.")
        # Its cancel flag is set: running, it stops at the worker's next check; queued, the worker drops it
        # unread. It is no longer a request the user is waiting for, so their slot is free now.
        await self._release(str(content.get("request_id")))

    async def _accepted(self, started: chat.Started) -> None:
        # Replies queue on our channel until this handler returns, so the watch exists before they arrive.
        self.watches[started.request_id] = inference.ReplyWatch(
            started.request_id,
            pickup_timeout=settings.INFERENCE_PICKUP_TIMEOUT,
            queue=started.queue or inference.QUEUE,  # the answering machine's workers, not any machine's
        )
        if started.lease is not None:
            self.leases[started.request_id] = started.lease
        if started.queue:
            self.queues[started.request_id] = started.queue
        if self.watchdog is None or self.watchdog.done():
            self.watchdog = asyncio.create_task(self._watch())
        await self.send_json(started.payload())

    # --- Replies from the inference worker ---------------------------------------------------------------------

    async def chat_bundle(self, event: dict[str, Any]) -> None:
        for reply in inference.unbundle(event):  # one frame each: the page reads them one by one
            await self._forward(reply)

    async def chat_started(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def chat_progress(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def chat_delta(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def chat_done(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def chat_error(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def _forward(self, event: dict[str, Any]) -> None:
        watch = self.watches.get(event.get("request_id", ""))
        if watch is None:
            return  # not a request of this socket (or one already given up on)
        watch.seen(event)
        if event.get("type") in ("chat.done", "chat.error"):
            del self.watches[event["request_id"]]
            await self._release(event["request_id"])  # before the page hears of it and sends its next
        await self.send_json({k: v for k, v in event.items() if k != "worker"})

    async def _watch(self) -> None:
        """Give up on requests nobody picked up, or whose worker died, instead of leaving the page waiting."""
        # Often enough to renew the answers' leases in time, too.
        interval = min(max(0.1, settings.INFERENCE_PICKUP_TIMEOUT / 4), inflight.RENEW_EVERY)
        while self.watches:
            await asyncio.sleep(interval)
            due = [lease for lease in self.leases.values() if lease.renewal_due()]
            for lease in due:
                await sync_to_async(inflight.renew, thread_sensitive=False)(lease)
            await self._tell_places()
            for request_id, watch in list(self.watches.items()):
                if not watch.due():
                    continue
                error = await sync_to_async(watch.check, thread_sensitive=False)()
                if error is None or self.watches.get(request_id) is not watch:
                    continue
                del self.watches[request_id]
                await self._release(request_id)
                await database_sync_to_async(chat.fail_answer)(
                    request_id=request_id, code=error["code"], message=error["message"]
                )
                # Should a worker take it after all, it must not answer into a page that gave up.
                with contextlib.suppress(Exception):
                    await sync_to_async(inference.cancel_generation, thread_sensitive=False)(request_id)
                await self.send_json(error)

    async def _tell_places(self) -> None:
        """chat.queued with each waiting answer's place in line, when it changes ("2 ahead")."""
        for request_id, queue in list(self.queues.items()):
            watch = self.watches.get(request_id)
            if watch is None or watch.worker is not None:  # ended, or the worker took it
                self.queues.pop(request_id, None)
                self.places.pop(request_id, None)
                continue
            ahead = await sync_to_async(inference.places_ahead, thread_sensitive=False)(request_id, queue)
            if ahead is None or watch.worker is not None or request_id not in self.watches:
                continue  # taken meanwhile: a place now would come after chat.started
            if ahead and ahead != self.places.get(request_id):  # "0 ahead" is about to start: no news
                self.places[request_id] = ahead
                await self.send_json(
                    {"type": "chat.queued", "request_id": request_id, "seq": -1, "ahead": ahead}
                )

    async def _release(self, request_id: str) -> None:
        lease = self.leases.pop(request_id, None)
        if lease is not None:
            await inflight.release_async(lease)

    async def _error(self, code: str, message: str, *, request_id: Any = None) -> None:
        await self.send_json(
            {"type": "chat.error", "request_id": request_id, "seq": -1, "code": code, "message": message}
        )
