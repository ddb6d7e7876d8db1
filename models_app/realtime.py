"""Every realtime payload, in one place. The database is the truth; these messages only carry updates.

Groups: `downloads.user.<id>` (a user's own jobs), `downloads.staff` (every job) and `session.<hash>` (every
socket of one login session, closed at logout). Chat streams are not
grouped: the worker sends straight to the requesting consumer's channel (a group send drops silently when a
channel is over capacity; a direct send raises, and we want to know)."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Literal, NotRequired, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

STAFF_DOWNLOADS_GROUP = "downloads.staff"


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


class ChatDelta(TypedDict):
    type: Literal["chat.delta"]
    request_id: str
    seq: int
    text: str
    tokens: int  # tokens generated so far


class ChatProgress(TypedDict):
    type: Literal["chat.progress"]
    request_id: str
    seq: int
    processed: int  # prompt tokens processed so far
    total: int


class ChatStarted(TypedDict):
    type: Literal["chat.started"]
    request_id: str
    seq: int
    notice: NotRequired[str]  # e.g. "The 3 oldest turns were dropped to fit the context window."
    prompt_tokens: NotRequired[int]
    cached_tokens: NotRequired[int]  # of prompt_tokens, served from the prompt cache
    max_tokens: NotRequired[int]
    model: NotRequired[str]  # repo id
    worker: NotRequired[str]  # Celery hostname of the inference worker that took the request


class ChatDone(TypedDict):
    type: Literal["chat.done"]
    request_id: str
    seq: int
    text: str
    finish_reason: str  # stop | length | cancelled | tool_calls
    usage: dict[str, Any]


class ChatQueued(TypedDict):
    """From the web side (the chat consumer), while the request waits for the worker; sent when it changes."""

    type: Literal["chat.queued"]
    request_id: str
    seq: int  # -1: not part of the worker's sequence
    ahead: int  # requests the worker takes first, the answer it is writing included


class ChatError(TypedDict):
    type: Literal["chat.error"]
    request_id: str
    seq: int  # -1 when made by the web side (no_worker, worker_died), not by the worker
    # model_load_failed | context_too_long | invalid_request | cancelled | internal (worker);
    # no_worker | worker_died (web side)
    code: str
    message: str
    worker: NotRequired[str]


def group_send(group: str, payload: dict[str, Any]) -> None:
    """Best effort: a realtime update must never fail the work it reports on."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, payload)
    except Exception as exc:  # Redis away: pages catch up from the database on reconnect
        log.warning("realtime group_send to %s failed: %s", group, exc)


def publish_download(payload: DownloadProgress | DownloadState, *, owner_id: int | None) -> None:
    if owner_id is not None:
        group_send(user_downloads_group(owner_id), dict(payload))
    group_send(STAFF_DOWNLOADS_GROUP, dict(payload))


def end_session(session_key: str) -> None:
    """Close every socket of this login session (they answer with close code 4401)."""
    group_send(session_group(session_key), dict(SessionEnded(type="session.ended")))
