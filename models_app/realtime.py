"""Every realtime payload, in one place. The database is the truth; these messages only carry updates.

Groups: `downloads.user.<id>` (a user's own jobs), `downloads.staff` (every job) and `session.<hash>` (every
socket of one login session, closed at logout). Chat streams are not
grouped: the worker sends straight to the requesting consumer's channel (a group send drops silently when a
channel is over capacity; a direct send raises, and we want to know); their frames (`chat.*`) are listed in
`services/inference.py`'s docstring, with the generation request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
from typing import Any, Literal, TypedDict

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

STAFF_DOWNLOADS_GROUP = "downloads.staff"
# A progress message waits no longer than this for a slow Redis: the work it reports on goes on.
SEND_TIMEOUT = 5.0


class LoopThread:
    """One asyncio loop per process, in a daemon thread, for every channel-layer send from sync code.
    channels_redis keeps a connection pool per loop: `async_to_sync` made a new loop, so a new connection,
    for each message (3.3 ms of CPU per group send here, 0.4 ms on the kept loop; a download publishes two
    five times a second)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="realtime-sender", daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


_loop_lock = threading.Lock()
_loop_thread: LoopThread | None = None


def loop_thread() -> LoopThread:
    """This process's loop (a forked child, such as a Celery pool process, starts its own: threads do not
    survive a fork)."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is None or _loop_thread.pid != os.getpid():
            _loop_thread = LoopThread()
        return _loop_thread


def user_downloads_group(user_id: int) -> str:
    return f"downloads.user.{user_id}"


def session_group(session_key: str) -> str:
    """Hashed: a group name is stored in Redis, and a session key is a credential."""
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


class SessionEnded(TypedDict):
    type: Literal["session.ended"]


class DownloadProgress(TypedDict):
    type: Literal["download.progress"]
    job_id: int
    repo_id: str
    revision: str
    state: str
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    current_file: str
    speed_bps: float
    eta_seconds: float | None
    percent: float


class DownloadState(TypedDict):
    type: Literal["download.state"]
    job_id: int
    repo_id: str
    revision: str
    state: str
    error_code: str
    error_message: str
    snapshot_id: int | None
    commit_sha: str


# --- Download payloads: built here only -------------------------------------------------------------------


def download_state(job: Any) -> DownloadState:
    """A DownloadJob's state change (the job's repository loaded)."""
    return {
        "type": "download.state",
        "job_id": job.id,
        "repo_id": job.repository.repo_id,
        "revision": job.revision,
        "state": job.state,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "snapshot_id": job.snapshot_id,
        "commit_sha": job.commit_sha,
    }


def download_progress(
    *,
    job_id: int,
    repo_id: str,
    revision: str,
    bytes_done: int,
    bytes_total: int,
    files_done: int,
    files_total: int,
    current_file: str,
    speed_bps: float,
    eta_seconds: float | None,
) -> DownloadProgress:
    """A running job's progress, from the worker's counters (not the row: it is written less often)."""
    done = min(bytes_done, bytes_total) if bytes_total else bytes_done
    return {
        "type": "download.progress",
        "job_id": job_id,
        "repo_id": repo_id,
        "revision": revision,
        "state": "running",
        "bytes_done": done,
        "bytes_total": bytes_total,
        "files_done": files_done,
        "files_total": files_total,
        "current_file": current_file,
        "speed_bps": round(speed_bps, 1),
        "eta_seconds": eta_seconds,
        "percent": round(100.0 * done / bytes_total, 1) if bytes_total else 0.0,
    }


def download_snapshot(job: Any) -> dict[str, Any]:
    """A job as one object carrying both the progress and the state fields (what a socket gets on connect)."""
    return {
        "job_id": job.id,
        "repo_id": job.repository.repo_id,
        "revision": job.revision,
        "state": job.state,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "files_done": job.files_done,
        "files_total": job.files_total,
        "current_file": job.current_file,
        "speed_bps": job.speed_bps,
        "eta_seconds": job.eta_seconds,
        "percent": round(job.percent, 1),
        "error_code": job.error_code,
        "error_message": job.error_message,
        "snapshot_id": job.snapshot_id,
        "commit_sha": job.commit_sha,
    }


def group_send(group: str, payload: dict[str, Any]) -> None:
    """Best effort: a realtime update must never fail the work it reports on."""
    layer = get_channel_layer()
    if layer is None:
        return
    runner = loop_thread()
    sent = runner.submit(layer.group_send(group, payload))
    if threading.current_thread() is runner.thread:
        return
    try:
        sent.result(timeout=SEND_TIMEOUT)  # in order: a job's state message after its last progress
    except Exception as exc:  # Redis away: pages catch up from the database on reconnect
        sent.cancel()
        log.warning("realtime group_send to %s failed: %s", group, exc)


def publish_download(payload: DownloadProgress | DownloadState, *, owner_id: int | None) -> None:
    if owner_id is not None:
        group_send(user_downloads_group(owner_id), dict(payload))
    group_send(STAFF_DOWNLOADS_GROUP, dict(payload))


def end_session(session_key: str) -> None:
    """Close every socket of this login session (they answer with close code 4401)."""
    group_send(session_group(session_key), dict(SessionEnded(type="session.ended")))
