"""Live download progress for the Downloads and Overview pages: `ws/downloads/`.

Authenticate, send a snapshot read from the database, then forward `download.progress` / `download.state`
events for jobs the user may see. The page renders from the database first; this is only an update stream.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

from dashboard.consumers.client_gone import ClientGoneMixin
from dashboard.consumers.session import SessionBoundMixin
from models_app.realtime import STAFF_DOWNLOADS_GROUP, download_snapshot, user_downloads_group
from models_app.selectors.jobs import job_list

# Jobs that finished this recently are in the snapshot too, so a page that was offline while a job ended
# still learns how it ended.
RECENT = dt.timedelta(minutes=10)
SNAPSHOT_LIMIT = 200


class DownloadsConsumer(ClientGoneMixin, SessionBoundMixin, AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        self.user = user
        # Staff get every job through the staff group; joining their own group as well would deliver their
        # own jobs twice.
        self.group = STAFF_DOWNLOADS_GROUP if user.is_staff else user_downloads_group(user.id)
        # Join before reading the snapshot: an update that lands in between is queued, not lost.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        if not await self.join_session():  # closed at logout
            return
        jobs = await self._snapshot()
        self.visible: set[int] = {job["job_id"] for job in jobs}
        await self.send_json({"type": "downloads.snapshot", "jobs": jobs})

    async def disconnect(self, code: int) -> None:
        await self.leave_session()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """Read-only stream: actions are POSTed forms, so anything sent here, JSON or not, is ignored."""

    async def download_progress(self, event: dict[str, Any]) -> None:
        if await self._may_see(event.get("job_id")):
            await self.send_json(event)

    async def download_state(self, event: dict[str, Any]) -> None:
        if await self._may_see(event.get("job_id")):
            await self.send_json(event)

    async def _may_see(self, job_id: Any) -> bool:
        """Cheap: a set lookup, and one query the first time a job id shows up (a job started after connect)."""
        if self.user.is_staff or job_id in self.visible:
            return True
        if not isinstance(job_id, int):
            return False
        if await job_list(user=self.user).filter(id=job_id).aexists():
            self.visible.add(job_id)
            return True
        return False

    @database_sync_to_async
    def _snapshot(self) -> list[dict[str, Any]]:
        since = timezone.now() - RECENT
        jobs = job_list(user=self.user, active_or_finished_since=since)[:SNAPSHOT_LIMIT]
        return [download_snapshot(job) for job in jobs]
