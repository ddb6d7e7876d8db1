"""A download worker killed mid-download: the pool child alone, or the worker's main process alone. The job
ends in one final state after a bounded retry, never stuck running; no snapshot is ready with missing or
wrong files; no partial file outlives the reaper. (Both processes at once, and the reaper's bookkeeping:
tests/downloads/test_faults.py::test_a_killed_worker_is_reaped_and_a_fresh_worker_completes_the_job.)
A killed pool child's job is taken over by the redelivered task in seconds, not by the reaper minutes later,
and the new attempt fetches only the bytes the dead one had not written."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid

import pytest

from devkit.processes import start_worker, wait_for
from models_app.models import DownloadJob
from models_app.services import hub as hub_service
from tests.downloads.conftest import resolve_requests, wait_job
from tests.reliability.conftest import (
    FINAL,
    HEARTBEAT_TIMEOUT,
    assert_ready_snapshots_verify,
    incomplete_files,
    repo_dir,
    settle,
)

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PADDING = os.urandom(3_000_000)
PADDING_SHA256 = hashlib.sha256(PADDING).hexdigest()
LARGE = os.urandom(8_000_000)
LARGE_SHA256 = hashlib.sha256(LARGE).hexdigest()
# The issue asks for ~10 s from the kill to the new attempt; the bound leaves room for a loaded machine.
TAKEOVER_BOUND = 20.0


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
    # redelivery finds the job's owner pid gone and takes the job over (the reaper would requeue it too).
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

    # On Linux billiard gives its pool children PR_SET_PDEATHSIG: the child dies with its parent, and the
    # reaper (on this machine: the owner's pid is gone) requeues the job for the replacement.
    job = settle(job_id)
    assert children
    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    weights = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == PADDING_SHA256
    assert assert_ready_snapshots_verify(repo_id) == 1
    assert incomplete_files(repo_id) == []


def partial_size(repo_id: str, blob: str) -> int:
    sizes = []
    for path in incomplete_files(repo_id, blob):
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            continue  # renamed into place, or adopted by the next attempt, since the listing
    return max(sizes, default=0)


def pull_a_third(hub, publish, dedicated_worker, stem: str):  # type: ignore[no-untyped-def]
    """Start a throttled pull of LARGE on a fresh worker and wait until ~30% of it is on disk: (worker, job id,
    repo id, sha, bytes on disk)."""
    # The default heartbeat timeout (120 s) and no reaper: only the redelivered task can take the job over.
    worker = dedicated_worker()
    repo_id, sha = publish(stem, extra={"padding.bin": LARGE})
    hub.faults.throttle(1_000_000, pattern="padding.bin")  # every transfer: the new attempt is seen running
    job_id = hub_service.download_model(repo_id).id
    wait_for(
        lambda: partial_size(repo_id, LARGE_SHA256) >= 0.3 * len(LARGE), 60, f"{repo_id}: padding.bin stuck"
    )
    return worker, job_id, repo_id, sha, partial_size(repo_id, LARGE_SHA256)


def kill_pool_child_midway(hub, publish, dedicated_worker, stem: str) -> tuple[int, str, str, int, float]:  # type: ignore[no-untyped-def]
    """SIGKILL the pool child at ~30% of a throttled pull: (job id, repo id, sha, bytes on disk at the kill,
    monotonic time of the kill)."""
    worker, job_id, repo_id, sha, kept = pull_a_third(hub, publish, dedicated_worker, stem)
    [child] = worker.children()
    os.kill(child, signal.SIGKILL)
    return job_id, repo_id, sha, kept, time.monotonic()


def padding_ranges(hub, repo_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        r.headers.get("Range", "") for r in resolve_requests(hub, repo_id) if r.path.endswith("/padding.bin")
    ]


def test_a_killed_pool_child_is_taken_over_in_seconds_and_resumes_from_its_last_byte(
    hub, publish, dedicated_worker
) -> None:
    job_id, repo_id, sha, kept, killed = kill_pool_child_midway(hub, publish, dedicated_worker, "resume")

    def taken_over() -> bool:
        row = DownloadJob.objects.get(id=job_id)
        return row.attempts >= 2 or row.state in FINAL

    wait_for(taken_over, TAKEOVER_BOUND, f"job {job_id} was not taken over within {TAKEOVER_BOUND:.0f} s")
    took = time.monotonic() - killed
    print(
        f"\nkilled at {kept / len(LARGE):.0%} of padding.bin; a new attempt took the job over {took:.1f} s later"
    )
    assert DownloadJob.objects.get(id=job_id).state == "running"  # resumed, not finished or failed

    job = wait_job(job_id, timeout=120)
    assert (job.state, job.error_code, job.attempts) == ("succeeded", "", 2), job.error_message
    served = hub.served(repo_id, "padding.bin")
    print(f"padding.bin: {len(LARGE)} B, {served} B served ({served / len(LARGE):.2f}x)")
    # A restart from byte 0 costs at least 1.3x (what the dead attempt fetched, then the whole file).
    assert served < 1.2 * len(LARGE)
    ranges = padding_ranges(hub, repo_id)
    assert len(ranges) == 2 and ranges[0] == "", ranges
    assert ranges[1].startswith("bytes=") and int(ranges[1][6:].split("-")[0]) >= kept, ranges
    weights = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == LARGE_SHA256
    assert assert_ready_snapshots_verify(repo_id) == 1
    assert incomplete_files(repo_id) == []


def test_bad_bytes_kept_from_the_killed_attempt_fail_the_final_hash(hub, publish, dedicated_worker) -> None:
    # The dead attempt wrote wrong bytes (a flaky proxy); the resumed one fetches the right rest.
    hub.faults.wrong_bytes(pattern="padding.bin", times=1)
    job_id, repo_id, sha, _, _ = kill_pool_child_midway(hub, publish, dedicated_worker, "resume-bad")

    job = wait_job(job_id, timeout=120)

    assert (job.state, job.error_code, job.attempts) == ("failed", "integrity", 2), job.error_message
    assert "padding.bin" in job.error_message
    assert padding_ranges(hub, repo_id)[1].startswith("bytes=")  # resumed: the bad part was kept
    assert not (repo_dir(repo_id) / "blobs" / LARGE_SHA256).exists()
    assert assert_ready_snapshots_verify(repo_id) == 0
    assert incomplete_files(repo_id) == []

    hub.faults.clear()
    again = wait_job(hub_service.download_model(repo_id), timeout=60)
    assert (again.state, again.error_code) == ("succeeded", ""), again.error_message
    weights = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == LARGE_SHA256


def test_a_killed_main_process_is_taken_over_when_its_replacement_starts(
    hub, publish, dedicated_worker, stack_env, process_log_dir
) -> None:
    worker, job_id, repo_id, sha, kept = pull_a_third(hub, publish, dedicated_worker, "resume-main")
    children = worker.children()
    # A dead main process gives nothing back: its unacknowledged message waits for the visibility timeout
    # (hours), and its child dies with it (PR_SET_PDEATHSIG).
    os.kill(worker.pid, signal.SIGKILL)
    worker.process.wait(10)
    wait_for(lambda: all(gone(pid) for pid in children), 10, "the pool child outlived its parent")

    # What a supervisor starts in its place (make run's reads the shared queues): no reaper runs here.
    replacement = start_worker(
        name=f"replacement-{uuid.uuid4().hex[:6]}",
        queues="downloads,maintenance",
        env=stack_env,
        log_dir=process_log_dir,
    )
    try:
        ready = time.monotonic()

        def taken_over() -> bool:
            row = DownloadJob.objects.get(id=job_id)
            return row.attempts >= 2 or row.state in FINAL

        wait_for(taken_over, TAKEOVER_BOUND, f"job {job_id} not taken over within {TAKEOVER_BOUND:.0f} s")
        print(f"\ntaken over {time.monotonic() - ready:.1f} s after the replacement worker was ready")
        job = wait_job(job_id, timeout=120)
    finally:
        replacement.stop()

    assert (job.state, job.error_code, job.attempts) == ("succeeded", "", 2), job.error_message
    served = hub.served(repo_id, "padding.bin")
    print(f"padding.bin: {len(LARGE)} B, {served} B served ({served / len(LARGE):.2f}x)")
    assert served < 1.2 * len(LARGE)
    assert int(padding_ranges(hub, repo_id)[1][6:].split("-")[0]) >= kept
    weights = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == LARGE_SHA256
    assert assert_ready_snapshots_verify(repo_id) == 1
    assert incomplete_files(repo_id) == []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_hub_that_ignores_range_on_the_takeover_gets_the_file_fetched_again_whole(
    hub, publish, dedicated_worker
) -> None:
    hub.faults.ignore_range(pattern="padding.bin")
    job_id, repo_id, sha, _, _ = kill_pool_child_midway(hub, publish, dedicated_worker, "resume-norange")

    job = wait_job(job_id, timeout=120)

    assert (job.state, job.error_code, job.attempts) == ("succeeded", "", 2), job.error_message
    assert padding_ranges(hub, repo_id)[1].startswith("bytes=")  # asked to resume, answered 200: truncated
    weights = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == LARGE_SHA256
    assert weights.stat().st_size == len(LARGE)
    assert assert_ready_snapshots_verify(repo_id) == 1
    assert incomplete_files(repo_id) == []
