"""Server-sent events for the REST API: one download job's progress and state until it ends.

The stream reads the database (the truth) about twice a second rather than subscribing to the realtime
group: the worker writes progress to the row about once a second, so polling faster shows nothing new, and a
poll never misses the final state the way a best-effort group message can."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from rest_framework.renderers import BaseRenderer

from models_app.models import DownloadJob

POLL_INTERVAL = 0.5
KEEPALIVE_INTERVAL = 15.0
# A stream is closed after this long even if the job is still running: clients reconnect (EventSource does
# by itself), and a proxy or a forgotten tab never holds a connection open for hours.
MAX_STREAM_SECONDS = 3600.0

PROGRESS_FIELDS = ("bytes_done", "bytes_total", "files_done", "files_total", "current_file", "speed_bps")


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n".encode()


class EventStreamRenderer(BaseRenderer):
    """Lets DRF's content negotiation accept `Accept: text/event-stream`. The stream itself is a
    StreamingHttpResponse; errors are rendered as JSON by the view (PullEventsView.handle_exception)."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        return json.dumps(data).encode() if data is not None else b""


async def job_events(job_id: int, serialize: Any) -> AsyncIterator[bytes]:
    """`state` (on start and on every state change), `progress` (when bytes or files move), keep-alive
    comments while nothing changes; ends after the event that reports a final state."""

    @sync_to_async
    def load() -> tuple[DownloadJob | None, dict[str, Any] | None]:
        job = DownloadJob.objects.select_related("repository", "requested_by").filter(pk=job_id).first()
        return job, (serialize(job) if job else None)

    started = time.monotonic()
    last_state: str | None = None
    last_progress: tuple[Any, ...] | None = None
    last_sent = time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        job, data = await load()
        if job is None or data is None:
            yield event("error", {"error": {"code": "not_found", "message": "The job was deleted."}})
            return
        progress = tuple(getattr(job, name) for name in PROGRESS_FIELDS)
        if job.state != last_state:
            last_state, last_progress = job.state, progress
            yield event("state", data)
            last_sent = time.monotonic()
        elif progress != last_progress:
            last_progress = progress
            yield event("progress", data)
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= KEEPALIVE_INTERVAL:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        if job.state in DownloadJob.FINAL_STATES:
            return
        if time.monotonic() - started > MAX_STREAM_SECONDS:
            return
        await asyncio.sleep(POLL_INTERVAL)
