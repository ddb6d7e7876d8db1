"""Fixtures for the reliability suite: faults, bad input and secrets.

The download fixtures (`publish`, `private_queue`, `dedicated_worker`) are the download tests' own, reused
here. `settle` stands in for celery beat: it runs the reaper every half second while it waits, so a job
that nobody finishes is resolved the way production resolves it, and a job that stays stuck fails the test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.conf import settings

from models_app.models import DownloadJob, Snapshot
from models_app.services import jobs
from models_app.services.cache_layout import FileRecord, repo_path
from models_app.services.hub_checks import verify_files
from tests.chat.conftest import slow_model_path  # noqa: F401  (a fixture, re-exported for this directory)
from tests.downloads.conftest import (  # noqa: F401  (fixtures, re-exported for this directory)
    FINAL,
    dedicated_worker,
    incomplete_files,
    private_queue,
    publish,
    repo_dir,
    tiny_files,
    xet_hub,
    xet_local_hub,
)

# Short enough that a dead worker's job is reaped within seconds, long enough that a busy 2-core machine
# never makes a live worker (which beats once a second) look dead.
HEARTBEAT_TIMEOUT = 3


def settle(job_id: int, *, timeout: float = 60.0, reap: bool = True) -> DownloadJob:
    """Wait for a job's final state, running the reaper like beat would. Fails if it never gets there."""
    deadline = time.monotonic() + timeout
    next_reap = 0.0
    while time.monotonic() < deadline:
        job = DownloadJob.objects.select_related("repository").get(id=job_id)
        if job.state in FINAL:
            return job
        if reap and time.monotonic() >= next_reap:
            jobs.reap_stalled_jobs()
            next_reap = time.monotonic() + 0.5
        time.sleep(0.05)
    row = DownloadJob.objects.filter(id=job_id).values().first()
    raise AssertionError(f"job {job_id} stuck: never reached a final state in {timeout:.0f} s: {row}")


def assert_ready_snapshots_verify(repo_id: str, root: Path | None = None) -> int:
    """Every snapshot of the repo marked ready has all its files, with the Hub's hashes. Returns how many."""
    ready = Snapshot.objects.filter(repository__repo_id=repo_id, status=Snapshot.Status.READY)
    for snapshot in ready:
        files = [
            FileRecord(e["path"], int(e["size"]), e.get("blob_id", ""), e.get("sha256", ""))
            for e in snapshot.files
        ]
        cache = root or Path(settings.CACHE_ROOTS[snapshot.cache_root])
        problems = verify_files(repo_path(cache, repo_id), snapshot.commit_sha, files)
        assert problems == {}, f"{repo_id}@{snapshot.commit_sha} is ready with bad files: {problems}"
    return ready.count()


@pytest.fixture
def short_heartbeat(settings) -> int:  # type: ignore[no-untyped-def]
    """The reaper in this process uses the same heartbeat timeout as the workers the test starts."""
    settings.DOWNLOAD_HEARTBEAT_TIMEOUT = HEARTBEAT_TIMEOUT
    return HEARTBEAT_TIMEOUT
