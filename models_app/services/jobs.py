"""Download job state transitions and the reaper.

Every transition is one conditional UPDATE (the row's current state, and for a running job the Celery task
that owns it, are part of the WHERE clause), so two workers, a worker and the reaper, or a worker and a
cancel can never both win: the loser sees 0 rows and backs off. A DownloadState message is published after
each transition that happened."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from models_app.models import DownloadJob
from models_app.realtime import download_state, publish_download
from models_app.services import redis as app_redis
from models_app.services import workers
from models_app.services.cache_layout import repo_folder
from models_app.services.errors import CANCELLED, NETWORK, DownloadError

log = logging.getLogger(__name__)

TASK_NAME = "downloads.download"
# Shared by every machine (each also has its own, workers.node_queue). Module-level so a test can point one
# job at a dedicated worker's queue.
QUEUE = "downloads"
# A queued job's message is sent again after this long without a worker taking it (see enqueued_at).
QUEUED_RESEND_AFTER = timedelta(minutes=30)
# Each sent task leaves a marker in Redis beside the message. A Redis that restarts without persistence (as the one
# `make run` starts) loses both: a queued job older than this whose marker is gone is sent again at once instead
# of after QUEUED_RESEND_AFTER. The grace covers a message being sent right now.
LOST_MESSAGE_GRACE = timedelta(seconds=60)
MESSAGE_MARKER_TTL = 7 * 24 * 3600
# An *.incomplete file younger than this may belong to a download that is just starting: leave it.
ORPHAN_MIN_AGE = 60.0
CANCEL_KEY_TTL = 24 * 3600
WRONG_NODE_DELAY = 5.0

State = DownloadJob.State


# --- Messages ---------------------------------------------------------------------------------------------


def publish_state(job: DownloadJob) -> None:
    """Publish the job's state once the transaction that changed it commits."""
    payload = download_state(job)
    owner_id = job.requested_by_id
    transaction.on_commit(lambda: publish_download(payload, owner_id=owner_id))


def _reload(job_id: int) -> DownloadJob | None:
    return DownloadJob.objects.select_related("repository").filter(id=job_id).first()


def _changed(job_id: int) -> DownloadJob | None:
    job = _reload(job_id)
    if job is not None:
        publish_state(job)
    return job


# --- Enqueueing -------------------------------------------------------------------------------------------


def enqueue(job_id: int, *, countdown: float | None = None) -> None:
    """Send the task for a queued job: its id only. The task id is recorded first, so the row always names
    the newest message; an older duplicate that arrives later finds the job taken and does nothing."""
    task_id = str(uuid.uuid4())
    DownloadJob.objects.filter(id=job_id, state=State.QUEUED).update(
        celery_task_id=task_id, enqueued_at=timezone.now()
    )
    node = DownloadJob.objects.filter(id=job_id).values_list("node", flat=True).first() or settings.NODE_NAME
    queue = workers.queue_for(workers.node_queue("downloads", node), QUEUE)  # the files land on that machine
    current_app.send_task(TASK_NAME, args=[job_id], task_id=task_id, queue=queue, countdown=countdown)
    with contextlib.suppress(Exception):  # a missing marker only means an earlier re-send, which is a no-op
        app_redis.client().set(_message_marker(job_id), task_id, ex=MESSAGE_MARKER_TTL)


def _message_marker(job_id: int) -> str:
    return app_redis.key("download-msg", job_id)


def _lost_messages(job_ids: list[int]) -> list[int]:
    """Queued jobs whose task message Redis no longer has (its marker went with it). Empty when Redis cannot
    be asked: the QUEUED_RESEND_AFTER rule still covers those jobs."""
    if not job_ids:
        return []
    try:
        with app_redis.client().pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(_message_marker(job_id))
            present = pipe.execute()
    except Exception as exc:  # redis errors vary; this is a best-effort shortcut
        log.warning("could not check download task markers: %s", exc)
        return []
    return [job_id for job_id, found in zip(job_ids, present, strict=True) if not found]


def enqueue_or_fail(job_id: int) -> None:
    """Enqueue after commit; a broker that refuses the message fails the job instead of leaving it queued
    forever."""
    try:
        enqueue(job_id)
    except Exception as exc:  # kombu/redis errors vary by transport
        log.error("could not enqueue download job %s: %s", job_id, exc)
        fail_queued(
            job_id,
            DownloadError(
                NETWORK,
                f"Could not queue the download: the task broker is unreachable ({type(exc).__name__}).",
            ),
        )


# --- Worker side: claim, heartbeat, finish ----------------------------------------------------------------


def stale_cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(seconds=settings.DOWNLOAD_HEARTBEAT_TIMEOUT)


def this_host() -> str:
    return socket.gethostname()


def _pid_gone(pid: int) -> bool:
    """True only when no process has this pid here. A pid reused by another process reads as alive: the
    heartbeat rule still covers that job, so a mistake costs time, never a second writer."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process
        return False
    return False


def owner_gone(job: DownloadJob, now: datetime | None = None) -> str | None:
    """Why the process running this job is provably dead, or None while it may be alive. On the machine that
    runs it, a pid that is gone (a killed pool child: Celery redelivers its task within a second); from
    anywhere, a heartbeat older than DOWNLOAD_HEARTBEAT_TIMEOUT."""
    if job.heartbeat_at is not None and job.heartbeat_at < stale_cutoff(now):
        timeout = settings.DOWNLOAD_HEARTBEAT_TIMEOUT
        return f"Its worker {job.worker or '?'} stopped responding (no heartbeat for {timeout:.0f} s)."
    if (
        job.owner_pid
        and job.owner_pid != os.getpid()  # this process is alive, whatever ran here before
        and job.node == settings.NODE_NAME
        and job.owner_host == this_host()
        and _pid_gone(job.owner_pid)
    ):
        return f"Its worker process (pid {job.owner_pid} of {job.worker or '?'}) died."
    return None


def claim(job_id: int, *, task_id: str, worker_name: str) -> DownloadJob | None:
    """queued -> running (attempts + 1) for this task, or take over a running job whose owner is provably
    dead (owner_gone: a redelivery after a crash). None when the job is not ours to run: finished, cancelled,
    or held by a live worker."""
    now = timezone.now()
    if DownloadJob.objects.filter(id=job_id, state=State.QUEUED).exclude(node=settings.NODE_NAME).exists():
        # The files must land in that node's cache. Sent to the shared queue (that node's own queue had no
        # live worker then, or a worker without node queues took it): put it back, routed again, rather than
        # download to the wrong machine.
        log.warning("download job %s is for another node; sending it back to the queue", job_id)
        enqueue(job_id, countdown=WRONG_NODE_DELAY)
        return None
    job = _reload(job_id)
    if job is None:
        log.info("download job %s is gone; nothing to do", job_id)
        return None
    mine = DownloadJob.objects.filter(id=job_id, node=settings.NODE_NAME, cancel_requested=False)
    fields: dict[str, object] = {}
    if job.state == State.RUNNING and (dead := owner_gone(job, now)) is not None:
        if job.cancel_requested or job.attempts >= settings.DOWNLOAD_MAX_ATTEMPTS:
            _end_orphaned(job, dead, now)
            return None
        # The row as read is part of the condition: a worker that beats in between, or another taker, wins.
        mine = mine.filter(state=State.RUNNING, heartbeat_at=job.heartbeat_at, owner_pid=job.owner_pid)
        fields["error_message"] = f"{dead} Resuming."
        log.warning("download job %s: %s Taking it over (attempt %s)", job_id, dead, job.attempts + 1)
    else:
        mine = mine.filter(state=State.QUEUED)
    won = mine.update(
        state=State.RUNNING,
        attempts=F("attempts") + 1,
        celery_task_id=task_id,
        worker=worker_name[:200],
        owner_host=this_host()[:255],
        owner_pid=os.getpid(),
        heartbeat_at=now,
        started_at=now,
        finished_at=None,
        speed_bps=0,
        current_file="",
        **fields,
    )
    if won:
        return _changed(job_id)
    job = _reload(job_id)
    if job is None:
        log.info("download job %s is gone; nothing to do", job_id)
    elif job.state == State.QUEUED and job.cancel_requested:
        cancel_queued(job_id, message="Cancelled before it started.")
    else:
        log.info(
            "download job %s is %s (worker %r); task %s does nothing", job_id, job.state, job.worker, task_id
        )
    return None


def _end_orphaned(job: DownloadJob, why: str, now: datetime) -> bool:
    """A running job whose owner is dead and that must not run again: cancelled if that was asked, else
    failed once its attempts are spent."""
    still = DownloadJob.objects.filter(
        id=job.id, state=State.RUNNING, heartbeat_at=job.heartbeat_at, owner_pid=job.owner_pid
    )
    if job.cancel_requested:
        won = still.update(
            state=State.CANCELLED, error_code=CANCELLED, error_message="Cancelled.", finished_at=now
        )
    else:
        won = still.update(
            state=State.FAILED,
            error_code=NETWORK,
            error_message=f"{why} Gave up after {job.attempts} attempts.",
            finished_at=now,
        )
    if won:
        log.warning("download job %s ended: %s", job.id, why)
        _changed(job.id)
    return bool(won)


def _owned(job_id: int, task_id: str):  # type: ignore[no-untyped-def]
    return DownloadJob.objects.filter(id=job_id, state=State.RUNNING, celery_task_id=task_id)


def heartbeat(job_id: int, *, task_id: str, **fields: object) -> bool:
    """Stamp heartbeat_at (and progress fields). False when the job is no longer ours to run, or a cancel
    was requested: the caller then stops."""
    return bool(
        _owned(job_id, task_id).filter(cancel_requested=False).update(heartbeat_at=timezone.now(), **fields)
    )


def update_running(job_id: int, *, task_id: str, **fields: object) -> bool:
    return bool(_owned(job_id, task_id).update(**fields))


def note_retry(job_id: int, *, task_id: str, error: DownloadError, delay: float) -> bool:
    """Count another attempt of a running job after a retryable error; the job stays running."""
    won = _owned(job_id, task_id).update(
        attempts=F("attempts") + 1,
        error_code="",
        error_message=f"{error.message} Retrying in {delay:.0f} s.",
        heartbeat_at=timezone.now(),
    )
    if won:
        _changed(job_id)
    return bool(won)


def succeed(job_id: int, *, task_id: str, snapshot_id: int) -> bool:
    now = timezone.now()
    won = _owned(job_id, task_id).update(
        state=State.SUCCEEDED,
        snapshot_id=snapshot_id,
        bytes_done=F("bytes_total"),
        files_done=F("files_total"),
        speed_bps=0,
        current_file="",
        error_code="",
        error_message="",
        finished_at=now,
        heartbeat_at=now,
    )
    if won:
        _changed(job_id)
    return bool(won)


def fail(job_id: int, *, task_id: str, error: DownloadError) -> bool:
    now = timezone.now()
    state = State.CANCELLED if error.code == CANCELLED else State.FAILED
    won = _owned(job_id, task_id).update(
        state=state,
        error_code=error.code,
        error_message=error.message,
        speed_bps=0,
        current_file="",
        finished_at=now,
        heartbeat_at=now,
    )
    if won:
        _clear_cancel_key(job_id)
        _changed(job_id)
    return bool(won)


def fail_queued(job_id: int, error: DownloadError) -> bool:
    won = DownloadJob.objects.filter(id=job_id, state=State.QUEUED).update(
        state=State.FAILED, error_code=error.code, error_message=error.message, finished_at=timezone.now()
    )
    if won:
        _changed(job_id)
    return bool(won)


# --- Cancel ----------------------------------------------------------------------------------------------


def cancel_key(job_id: int) -> str:
    return app_redis.key("cancel", "job", job_id)


def _clear_cancel_key(job_id: int) -> None:
    with contextlib.suppress(Exception):  # the flag expires by itself
        app_redis.client().delete(cancel_key(job_id))


def cancel_queued(job_id: int, *, message: str) -> bool:
    won = DownloadJob.objects.filter(id=job_id, state=State.QUEUED).update(
        state=State.CANCELLED,
        cancel_requested=True,
        error_code=CANCELLED,
        error_message=message,
        finished_at=timezone.now(),
    )
    if won:
        _clear_cancel_key(job_id)
        _changed(job_id)
    return bool(won)


def request_cancel(job_id: int, *, message: str) -> None:
    """Flag a job for cancellation. A queued job is cancelled at once; a running one is stopped by its
    worker (the flag is read every fraction of a second); a running job whose worker is dead is cancelled
    here."""
    DownloadJob.objects.filter(id=job_id, state__in=DownloadJob.ACTIVE_STATES).update(
        cancel_requested=True, error_message=message
    )
    try:
        # The worker polls this key several times a second; the database flag is the durable copy.
        app_redis.client().set(cancel_key(job_id), message, ex=CANCEL_KEY_TTL)
    except Exception as exc:
        log.warning(
            "cancel flag for job %s not set in Redis (%s); the worker reads the database", job_id, exc
        )
    if cancel_queued(job_id, message=message):
        return
    won = DownloadJob.objects.filter(id=job_id, state=State.RUNNING, heartbeat_at__lt=stale_cutoff()).update(
        state=State.CANCELLED, error_code=CANCELLED, error_message=message, finished_at=timezone.now()
    )
    if won:
        _changed(job_id)


def cancel_requested(job_id: int) -> str | None:
    """The fast check a running download makes several times a second: the cancel message, or None."""
    value = app_redis.client().get(cancel_key(job_id))
    return None if value is None else str(value) or "Cancelled."


# --- The reaper -------------------------------------------------------------------------------------------


def reap_stalled_jobs(now: datetime | None = None) -> list[int]:
    """Resolve jobs whose worker died: running jobs whose owner is provably dead (owner_gone: no heartbeat for
    DOWNLOAD_HEARTBEAT_TIMEOUT, or a pid of this machine that is gone) are requeued (attempts left) or
    failed; queued jobs nobody took for a long time get their message again; then *.incomplete files that no
    active job owns are removed. Returns the ids of the jobs it changed."""
    now = now or timezone.now()
    changed: list[int] = []
    # Stale anywhere, or run by a process of this machine (its pid tells at once whether it is alive).
    suspects = DownloadJob.objects.filter(state=State.RUNNING).filter(
        Q(heartbeat_at__lt=stale_cutoff(now))
        | Q(node=settings.NODE_NAME, owner_host=this_host(), owner_pid__isnull=False)
    )
    fields = ("id", "attempts", "cancel_requested", "heartbeat_at", "worker", "node", "owner_host")
    for job in suspects.only(*fields, "owner_pid"):
        dead = owner_gone(job, now)
        if dead is None:
            continue
        if job.cancel_requested or job.attempts >= settings.DOWNLOAD_MAX_ATTEMPTS:
            won = _end_orphaned(job, dead, now)
        else:
            # The row as read is part of the condition: a worker that beats in between wins.
            still = DownloadJob.objects.filter(
                id=job.id, state=State.RUNNING, heartbeat_at=job.heartbeat_at, owner_pid=job.owner_pid
            )
            won = bool(
                still.update(
                    state=State.QUEUED,
                    worker="",
                    owner_host="",
                    owner_pid=None,
                    heartbeat_at=None,
                    speed_bps=0,
                    current_file="",
                    error_code="",
                    error_message=f"{dead} Retrying.",
                )
            )
            if won:
                log.warning("reaped download job %s (%s)", job.id, dead)
                _changed(job.id)
                enqueue_or_fail(job.id)
        if won:
            changed.append(job.id)

    forgotten = DownloadJob.objects.filter(state=State.QUEUED, cancel_requested=False).filter(
        Q(enqueued_at__lt=now - QUEUED_RESEND_AFTER)
        | Q(enqueued_at__isnull=True, created_at__lt=now - QUEUED_RESEND_AFTER)
    )
    for job_id in forgotten.values_list("id", flat=True):
        log.warning(
            "download job %s waited %s without a worker taking it: sending it again",
            job_id,
            QUEUED_RESEND_AFTER,
        )
        enqueue_or_fail(job_id)
        changed.append(job_id)
    waiting = DownloadJob.objects.filter(
        state=State.QUEUED, cancel_requested=False, enqueued_at__lt=now - LOST_MESSAGE_GRACE
    ).exclude(id__in=changed)
    for job_id in _lost_messages(list(waiting.values_list("id", flat=True))):
        log.warning("download job %s lost its task message (Redis restarted?): sending it again", job_id)
        enqueue_or_fail(job_id)
        changed.append(job_id)

    remove_orphaned_incomplete(now=now)
    return changed


def busy_repo_dirs(*, exclude_job: int | None = None, now: datetime | None = None) -> set[str]:
    """Cache folder names of repos that a job on this node is writing to (running, heartbeat fresh) or will
    resume (queued: a crashed attempt's partial files are where the next one starts, hub_resume)."""
    running = DownloadJob.objects.filter(node=settings.NODE_NAME).filter(
        Q(state=State.RUNNING, heartbeat_at__gte=stale_cutoff(now)) | Q(state=State.QUEUED)
    )
    if exclude_job is not None:
        running = running.exclude(id=exclude_job)
    return {repo_folder(r) for r in running.values_list("repository__repo_id", flat=True)}


def remove_incomplete(
    repo_dir: Path, *, min_age: float = 0.0, now: float | None = None, names: set[str] | None = None
) -> list[Path]:
    """Delete `blobs/*.incomplete` in one repo folder (only those whose blob name is in `names`, if given)."""
    removed = []
    now = time.time() if now is None else now
    for path in (repo_dir / "blobs").glob("*.incomplete"):
        if names is not None and path.name.split(".", 1)[0] not in names:
            continue
        try:
            if now - path.stat().st_mtime < min_age:
                continue
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue
    return removed


def remove_orphaned_incomplete(*, now: datetime | None = None) -> list[Path]:
    """`*.incomplete` files of this node's cache roots that no active job owns (a killed worker's)."""
    busy = busy_repo_dirs(now=now)
    clock = (now or timezone.now()).timestamp()
    removed: list[Path] = []
    for root in settings.CACHE_ROOTS.values():
        if not Path(root).is_dir():
            continue
        for entry in os.scandir(root):
            if entry.name.startswith("models--") and entry.name not in busy and entry.is_dir():
                removed += remove_incomplete(Path(entry.path), min_age=ORPHAN_MIN_AGE, now=clock)
    for path in removed:
        log.info("removed orphaned partial download %s", path)
    return removed
