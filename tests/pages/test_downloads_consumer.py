"""ws/downloads/: anonymous refused; on connect a snapshot of the user's own jobs from the database; then
progress and state events forwarded only for jobs the user may see. Through the real ASGI stack (origin
check, session auth) and the real Redis channel layer."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from dashboard.asgi import application
from models_app.models import DownloadJob, Snapshot
from models_app.realtime import STAFF_DOWNLOADS_GROUP, user_downloads_group
from tests.factories import make_job, make_snapshot

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://localhost")
# The Host a browser sends with it: the Origin check compares the two (dashboard/ws_origin.py).
HOST = (b"host", b"localhost")


def progress(job: DownloadJob, done: int = 500) -> dict[str, Any]:
    return {
        "type": "download.progress",
        "job_id": job.id,
        "repo_id": job.repository.repo_id,
        "revision": job.revision,
        "state": "running",
        "bytes_done": done,
        "bytes_total": 1000,
        "files_done": 0,
        "files_total": 2,
        "current_file": "model.safetensors",
        "speed_bps": 100.0,
        "eta_seconds": 5.0,
        "percent": done / 10,
    }


def running_job(user: Any, repo_id: str) -> DownloadJob:
    snap = make_snapshot(repo_id, owner=user, status=Snapshot.Status.DOWNLOADING)
    return make_job(snap, user=user, state=DownloadJob.State.RUNNING, bytes_done=123)


def communicator(client: Any, user: Any | None) -> WebsocketCommunicator:
    headers = [ORIGIN, HOST]
    if user is not None:
        client.force_login(user)
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return WebsocketCommunicator(application, "/ws/downloads/", headers=headers)


def test_anonymous_is_refused(client) -> None:
    async def scenario() -> None:
        comm = communicator(client, None)
        connected, _ = await comm.connect()
        assert not connected
        await comm.disconnect()  # end the refused app here, not in the loop's teardown (it can hang there)

    async_to_sync(scenario)()


def test_a_foreign_origin_is_refused(client, alice) -> None:
    client.force_login(alice)
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())

    async def scenario() -> None:
        comm = WebsocketCommunicator(
            application, "/ws/downloads/", headers=[(b"origin", b"http://evil.test"), HOST, cookie]
        )
        connected, _ = await comm.connect()
        assert not connected
        # The denier listens on the channel layer until told to stop: stop it here, not in the event loop's
        # teardown, where cancelling its Redis read hung once in CI.
        await comm.disconnect()

    async_to_sync(scenario)()


def test_snapshot_on_connect_then_only_own_updates(client, alice, bob) -> None:
    mine = running_job(alice, "alice/model")
    theirs = running_job(bob, "bob/model")
    finished = make_job(make_snapshot("alice/done", owner=alice), user=alice)
    comm = communicator(client, alice)

    async def scenario() -> None:
        connected, _ = await comm.connect()
        assert connected
        snapshot = await comm.receive_json_from(timeout=5)
        assert snapshot["type"] == "downloads.snapshot"
        jobs = {job["job_id"]: job for job in snapshot["jobs"]}
        assert set(jobs) == {mine.id, finished.id}  # own active jobs, and recently finished ones
        assert jobs[mine.id]["bytes_done"] == 123 and jobs[mine.id]["repo_id"] == "alice/model"

        layer = get_channel_layer()
        await layer.group_send(user_downloads_group(bob.id), progress(theirs))
        # Even a stray event about bob's job in alice's group is dropped: permission is re-checked per event.
        await layer.group_send(user_downloads_group(alice.id), progress(theirs))
        await layer.group_send(user_downloads_group(alice.id), progress(mine, 700))
        update = await comm.receive_json_from(timeout=5)
        assert update["type"] == "download.progress" and update["job_id"] == mine.id
        assert update["bytes_done"] == 700
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_a_job_started_after_connect_is_forwarded(client, alice) -> None:
    comm = communicator(client, alice)

    async def scenario() -> None:
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from(timeout=5))["jobs"] == []
        from channels.db import database_sync_to_async

        job = await database_sync_to_async(running_job)(alice, "alice/later")
        state = {
            "type": "download.state",
            "job_id": job.id,
            "repo_id": "alice/later",
            "revision": job.revision,
            "state": "succeeded",
            "error_code": "",
            "error_message": "",
            "snapshot_id": 1,
            "commit_sha": "",
        }
        await get_channel_layer().group_send(user_downloads_group(alice.id), state)
        update = await comm.receive_json_from(timeout=5)
        assert update["type"] == "download.state" and update["state"] == "succeeded"
        await comm.disconnect()

    async_to_sync(scenario)()


def test_staff_get_every_job_once(client, staff, bob) -> None:
    theirs = running_job(bob, "bob/model")
    comm = communicator(client, staff)

    async def scenario() -> None:
        assert (await comm.connect())[0]
        snapshot = await comm.receive_json_from(timeout=5)
        assert [job["job_id"] for job in snapshot["jobs"]] == [theirs.id]
        # Publishers send to the owner's group and the staff group (realtime.publish_download).
        await get_channel_layer().group_send(user_downloads_group(bob.id), progress(theirs))
        await get_channel_layer().group_send(STAFF_DOWNLOADS_GROUP, progress(theirs))
        update = await comm.receive_json_from(timeout=5)
        assert update["job_id"] == theirs.id
        assert await comm.receive_nothing(timeout=0.3)  # not twice
        await comm.disconnect()

    async_to_sync(scenario)()


def test_an_idle_socket_stays_open_past_the_channel_layers_blocking_read(client, alice) -> None:
    """channels_redis blocks on Redis 5 s per receive; a Redis socket timeout at or under that closed every
    websocket idle for 5 s (a quiet downloads page, a long prompt before the first chat token)."""
    comm = communicator(client, alice)
    job = running_job(alice, "alice/quiet")

    async def scenario() -> None:
        assert (await comm.connect())[0]
        await comm.receive_json_from(timeout=5)
        assert await comm.receive_nothing(timeout=7, interval=0.5)
        await get_channel_layer().group_send(user_downloads_group(alice.id), progress(job, done=700))
        update = await comm.receive_json_from(timeout=5)
        assert update["type"] == "download.progress" and update["bytes_done"] == 700
        await comm.disconnect()

    async_to_sync(scenario)()
