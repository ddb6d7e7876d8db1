"""The cache under pressure while a download runs: a cleanup started mid-download leaves the running job's
files alone and the download finishes; a disk that fills mid-download fails the job `disk_full`, removes its
partial files and damages nothing else on that disk."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from devkit.processes import wait_for
from models_app.models import Snapshot
from models_app.services import hub as hub_service
from models_app.services.cache_layout import repo_path
from models_app.services.cleanup import clean_cache
from tests.downloads.conftest import new_repo_id, wait_job, xet_worker
from tests.reliability.conftest import assert_ready_snapshots_verify, incomplete_files, repo_dir

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PADDING = os.urandom(2_000_000)
PADDING_SHA256 = hashlib.sha256(PADDING).hexdigest()
DAY = 86400


def age(repo_id: str, days: int = 90) -> None:
    then = timezone.now() - timedelta(days=days)
    Snapshot.objects.filter(repository__repo_id=repo_id).update(last_used_at=then, downloaded_at=then)


@pytest.mark.usefixtures("download_worker")
def test_a_cleanup_during_a_download_leaves_its_files_alone(hub, publish) -> None:
    repo_id, old_sha = publish("busy")
    assert wait_job(hub_service.download_model(repo_id)).state == "succeeded"
    idle_id, _ = publish("idle")
    assert wait_job(hub_service.download_model(idle_id)).state == "succeeded"
    age(repo_id)
    age(idle_id)
    new_sha = hub.commit(repo_id, {"padding.bin": PADDING})
    hub.faults.throttle(1_000_000, pattern="padding.bin")
    job = hub_service.download_model(repo_id)
    wait_for(lambda: bool(incomplete_files(repo_id, PADDING_SHA256)), 30, "padding.bin never started")
    before = sorted(p.name for p in (repo_dir(repo_id) / "blobs").iterdir())

    # The most aggressive policy there is: everything old, superseded or over a 1-byte budget goes.
    plan = clean_cache(max_age=DAY, max_size=1, keep_revisions=1, dry_run=False)

    assert {item.repo_id for item in plan.deleted} == {idle_id}  # it did run
    assert not repo_dir(idle_id).exists()
    assert repo_id not in {item.repo_id for item in plan.items}
    assert incomplete_files(repo_id, PADDING_SHA256)  # the running job's partial file is still there
    assert set(before) <= {p.name for p in (repo_dir(repo_id) / "blobs").iterdir()}
    job = wait_job(job)
    assert (job.state, job.error_code, job.commit_sha) == ("succeeded", "", new_sha), job.error_message
    blob = repo_dir(repo_id) / "snapshots" / new_sha / "padding.bin"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == PADDING_SHA256
    assert (
        assert_ready_snapshots_verify(repo_id) == 2
    )  # the old revision too: nothing of the repo was touched
    assert Snapshot.objects.get(repository__repo_id=repo_id, commit_sha=old_sha).status == "ready"


# --- A full disk ------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs: a real filesystem that really runs out of space (the suite runs as root)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        message = f"mounting a small tmpfs needs root: {result.stderr.strip()}"
        if os.environ.get("CI"):  # CI runs as root: there a missing mount is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Write zeros until the disk says ENOSPC: what another process filling the disk looks like."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(chunk)
            f.flush()
    with contextlib.suppress(OSError):  # what the buffer could not take
        filler.open("ab").write(b"\0" * 4096)
    try:
        (disk / "probe").write_bytes(b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("the disk is not full")
    return filler


def test_a_disk_that_fills_during_a_download_fails_disk_full_and_damages_nothing(
    hub, publish, dedicated_worker, small_disk, settings
) -> None:
    settings.CACHE_ROOTS = {**settings.CACHE_ROOTS, "small": small_disk}
    dedicated_worker(HF_EXTRA_CACHE_ROOTS=f"small={small_disk}")
    kept_id, _ = publish("kept")
    assert wait_job(hub_service.download_model(kept_id, cache="small")).state == "succeeded"
    repo_id, _ = publish("full", extra={"padding.bin": PADDING})
    hub.faults.throttle(1_000_000, pattern="padding.bin")
    job = hub_service.download_model(repo_id, cache="small")
    folder = repo_path(small_disk, repo_id)
    wait_for(lambda: any((folder / "blobs").glob("*.incomplete")), 30, "padding.bin never started")

    filler = fill(small_disk)

    job = wait_job(job)
    assert (job.state, job.error_code) == ("failed", "disk_full"), job.error_message
    assert "disk" in job.error_message.lower() and "full" in job.error_message.lower()
    assert job.attempts == 1  # never retried: it cannot get better by itself
    assert list(small_disk.rglob("*.incomplete")) == []
    assert not Snapshot.objects.filter(repository__repo_id=repo_id, status=Snapshot.Status.READY).exists()
    assert assert_ready_snapshots_verify(kept_id, root=small_disk) == 1  # the other model is intact

    # Space freed, the same pull works.
    filler.unlink()
    hub.faults.clear()
    again = wait_job(hub_service.download_model(repo_id, cache="small"))
    assert (again.state, again.error_code) == ("succeeded", ""), again.error_message
    assert assert_ready_snapshots_verify(repo_id, root=small_disk) == 1


def test_a_disk_that_fills_during_a_xet_transfer_fails_disk_full_and_leaves_nothing(
    xet_hub, dedicated_worker, small_disk, settings, tiny_files
) -> None:
    settings.CACHE_ROOTS = {**settings.CACHE_ROOTS, "small": small_disk}
    repo_id = new_repo_id("xet-full")
    xet_hub.create_repo(
        repo_id, {**tiny_files, "big.safetensors": os.urandom(4_000_000)}
    )  # before the worker
    xet_worker(dedicated_worker, xet_hub, HF_EXTRA_CACHE_ROOTS=f"small={small_disk}")
    # The Xet token is fetched right before hf_xet writes: hold it back until the disk is full.
    token = xet_hub.faults.stall_after_headers(3, times=1, path=f"/api/models/{repo_id}/xet-read-token/*")
    job = hub_service.download_model(repo_id, cache="small")
    wait_for(lambda: token.hits >= 1, 60, "no Xet transfer started")

    filler = fill(small_disk)

    job = wait_job(job, timeout=60)
    assert (job.state, job.error_code) == ("failed", "disk_full"), job.error_message
    assert job.attempts == 1
    assert list(small_disk.rglob("*.incomplete")) == []
    # Nothing of the pull is left: no repo folder, no shared store entry.
    assert not repo_path(small_disk, repo_id).exists()
    assert [p for p in (small_disk / "blobs").rglob("*") if p.is_file() and len(p.name) == 64] == []

    filler.unlink()
    again = wait_job(hub_service.download_model(repo_id, cache="small"), timeout=60)
    assert (again.state, again.error_code) == ("succeeded", ""), again.error_message
    assert assert_ready_snapshots_verify(repo_id, root=small_disk) == 1
