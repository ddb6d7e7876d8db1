"""A download worker killed mid-download: the pool child alone, or the worker's main process alone. The job
ends in one final state after a bounded retry, never stuck running; no snapshot is ready with missing or
wrong files; no partial file outlives the reaper. (Both processes at once, and the reaper's bookkeeping:
tests/downloads/test_faults.py::test_a_killed_worker_is_reaped_and_a_fresh_worker_completes_the_job.)"""

from __future__ import annotations

import hashlib
import os
import signal

import pytest

from models_app.services import hub as hub_service
from tests.reliability.conftest import (
    HEARTBEAT_TIMEOUT,
    assert_ready_snapshots_verify,
    incomplete_files,
    repo_dir,
    settle,
)
from tests.support.processes import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PADDING = os.urandom(3_000_000)
PADDING_SHA256 = hashlib.sha256(PADDING).hexdigest()


def start_slow_download(hub, publish) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    repo_id, sha = publish("crash", extra={"padding.bin": PADDING})
    # Only the first transfer is slow: the retry after the crash runs at full speed.
    hub.faults.throttle(1_000_000, pattern="padding.bin", times=1)
    job = hub_service.download_model(repo_id)
    wait_for(
        lambda: bool(incomplete_files(repo_id, PADDING_SHA256)), 30, f"{repo_id}: padding.bin never started"
    )
    return job.id, repo_id, sha


def assert_complete_and_clean(job, repo_id: str, sha: str) -> None:  # type: ignore[no-untyped-def]
    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    assert 2 <= job.attempts <= 3  # retried, within DOWNLOAD_MAX_ATTEMPTS
    weights = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == PADDING_SHA256
    assert assert_ready_snapshots_verify(repo_id) == 1
    assert incomplete_files(repo_id) == []


def test_a_killed_pool_child_is_retried_and_completes(
    hub, publish, dedicated_worker, short_heartbeat
) -> None:
    worker = dedicated_worker(DOWNLOAD_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT))
    job_id, repo_id, sha = start_slow_download(hub, publish)
    [child] = worker.children()

    os.kill(child, signal.SIGKILL)

    # The main process replaces its child and gets the message back (acks_late + reject_on_worker_lost); the
    # redelivery finds the job's heartbeat still fresh and leaves it, and the reaper requeues it once the
    # heartbeat is stale.
    job = settle(job_id)
    assert worker.alive() and worker.children() != [child]
    assert_complete_and_clean(job, repo_id, sha)


def test_a_killed_main_process_leaves_no_stuck_job(hub, publish, dedicated_worker, short_heartbeat) -> None:
    worker = dedicated_worker(DOWNLOAD_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT))
    job_id, repo_id, sha = start_slow_download(hub, publish)
    children = worker.children()

    os.kill(worker.pid, signal.SIGKILL)
    worker.process.wait(10)
    # A replacement worker, as a supervisor would start: it takes whatever the reaper requeues.
    dedicated_worker(DOWNLOAD_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT))

    # On Linux billiard gives its pool children PR_SET_PDEATHSIG: the child dies with its parent, its
    # heartbeat stops, and the reaper requeues the job for the replacement.
    job = settle(job_id)
    assert children
    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    weights = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == PADDING_SHA256
    assert assert_ready_snapshots_verify(repo_id) == 1
    assert incomplete_files(repo_id) == []
