"""hub_batch: a pull's small files come down together, a few connections at a time, into exactly the cache
layout huggingface_hub writes; cancel, a failing file and a blob another process is writing behave as they do
through snapshot_download."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, snapshot_download

from models_app.models import Snapshot
from models_app.services import hub as hub_service
from models_app.services import hub_batch
from models_app.services.hub_batch import SMALL_FILE_MAX
from tests.downloads.conftest import incomplete_files, repo_dir, resolve_requests, wait_job

pytestmark = [pytest.mark.django_db(transaction=True)]

# LFS (by size or suffix) and regular files both; 5 kB each so a throttle can make them last.
SHARDS = {f"extra/shard-{i:02d}.safetensors": os.urandom(5_000 + i) for i in range(24)}
NOTES = {f"extra/note-{i}.txt": f"note {i}\n".encode() for i in range(4)}
BIG = {"big.bin": os.urandom(SMALL_FILE_MAX + 1)}


def layout(root: Path) -> tuple[dict[str, str], dict[str, int]]:
    """A repo folder as huggingface_hub's readers see it: each snapshot entry's link target, and each blob's
    name and permission bits."""
    snapshots = root / "snapshots"
    links = {str(p.relative_to(snapshots)): os.readlink(p) for p in snapshots.rglob("*") if p.is_symlink()}
    return links, {p.name: p.stat().st_mode & 0o777 for p in (root / "blobs").iterdir()}


@pytest.mark.usefixtures("download_worker")
def test_small_files_land_exactly_as_huggingface_hub_lays_them_out(hub, publish, tmp_path) -> None:
    repo_id, sha = publish("batch", extra={**SHARDS, **NOTES, **BIG})

    job = wait_job(hub_service.download_model(repo_id), timeout=60)

    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    assert job.bytes_done == job.bytes_total and job.files_done == job.files_total
    # One listing, no HEAD, one GET per file.
    assert resolve_requests(hub, repo_id, "HEAD") == []
    gets = [r.path.rsplit(f"/{sha}/", 1)[-1] for r in resolve_requests(hub, repo_id)]
    assert sorted(gets) == sorted({*gets}) and {*SHARDS, *NOTES, *BIG} <= set(gets)
    ours = repo_dir(repo_id)
    reference = Path(
        snapshot_download(repo_id, revision=sha, cache_dir=tmp_path, endpoint=hub.url, token=False)
    ).parent.parent
    assert layout(ours) == layout(reference)
    assert (ours / "trees" / f"{sha}.json").is_file() and incomplete_files(repo_id) == []
    scanned = next(r for r in scan_cache_dir(ours.parent).repos if r.repo_id == repo_id)
    revision = next(iter(scanned.revisions))
    assert revision.commit_hash == sha and revision.nb_files == job.files_total


def test_cancel_stops_the_small_files_and_leaves_nothing(hub, publish, private_queue, settings) -> None:
    repo_id, sha = publish("batch-cancel", extra=SHARDS)
    hub.faults.throttle(2_000, pattern="extra/*")  # ~2.5 s a file, four at a time: ~15 s for them all
    job = hub_service.download_model(repo_id)

    def cancel_once_started() -> None:
        deadline = time.monotonic() + 20
        while not incomplete_files(repo_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        hub_service.cancel_job(job)

    canceller = threading.Thread(target=cancel_once_started)
    canceller.start()
    hub_service.run_download(job.id, task_id="in-process", worker_name="pytest")
    canceller.join()

    job.refresh_from_db()
    assert (job.state, job.error_code) == ("cancelled", "cancelled")
    served = sum(hub.served(repo_id, path) for path in SHARDS)
    assert 0 < served < sum(len(b) for b in SHARDS.values())
    assert incomplete_files(repo_id) == []
    assert not any((repo_dir(repo_id) / "snapshots" / sha / path).exists() for path in SHARDS)
    assert not Snapshot.objects.filter(repository__repo_id=repo_id).exists()


def test_a_small_file_that_keeps_failing_fails_the_job_and_keeps_none_of_its_files(
    hub, publish, private_queue, settings
) -> None:
    settings.DOWNLOAD_MAX_ATTEMPTS = 1
    repo_id, sha = publish("batch-fail", extra=SHARDS)
    hub.faults.fail_500(times=None, pattern="extra/shard-07.safetensors", methods=("GET",))
    job = hub_service.download_model(repo_id)

    hub_service.run_download(job.id, task_id="in-process", worker_name="pytest")

    job.refresh_from_db()
    assert job.state == "failed" and job.error_code != "internal", job.error_message
    assert incomplete_files(repo_id) == []
    # The files that came down before the failure are discarded with the failed pull.
    assert not any((repo_dir(repo_id) / "snapshots" / sha / path).exists() for path in SHARDS)
    assert not list((repo_dir(repo_id) / "blobs").glob("*"))


def test_a_blob_another_process_is_writing_is_left_to_huggingface_hub(
    hub, publish, private_queue, monkeypatch
) -> None:
    repo_id, sha = publish("batch-locked", extra=NOTES)
    fetched: list[set[str]] = []
    fetch = hub_batch.fetch
    monkeypatch.setattr(hub_batch, "fetch", lambda *a, **kw: fetched.append(fetch(*a, **kw)) or fetched[-1])
    held = next(f for p, f in hub.repo(repo_id).commits[sha].files.items() if p == "extra/note-2.txt")
    locks = repo_dir(repo_id).parent / ".locks" / repo_dir(repo_id).name
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{held.etag}.lock", os.O_RDWR | os.O_CREAT, 0o664)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what FileLock does in another process downloading the same blob
    released = threading.Timer(2.0, os.close, args=(fd,))
    released.start()
    job = hub_service.download_model(repo_id)

    hub_service.run_download(job.id, task_id="in-process", worker_name="pytest")
    released.join()

    job.refresh_from_db()
    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    note = repo_dir(repo_id) / "snapshots" / sha / "extra/note-2.txt"
    assert note.read_bytes() == NOTES["extra/note-2.txt"]
    # The batch took the other notes and left this one, which snapshot_download fetched once the lock was free.
    assert len(fetched) == 1 and {"extra/note-0.txt", "extra/note-1.txt"} <= fetched[0]
    assert "extra/note-2.txt" not in fetched[0]
    gets = [r.path for r in resolve_requests(hub, repo_id) if r.path.endswith("/extra/note-2.txt")]
    assert len(gets) == 1


def test_a_pull_after_the_lock_folder_was_cleaned_away_still_fetches_its_small_files(
    hub, publish, private_queue
) -> None:
    """The worker remembered which lock folders it had made: once `.locks/` was cleaned away under a live
    worker (an `rm -rf` of the cache's locks, a cache tool), its next pull of that repo failed on every
    small file with FileNotFoundError, until the worker restarted."""
    repo_id, sha = publish("batch-relock", extra=NOTES)
    first = hub_service.download_model(repo_id)
    hub_service.run_download(first.id, task_id="in-process", worker_name="pytest")
    shutil.rmtree(repo_dir(repo_id).parent / ".locks" / repo_dir(repo_id).name)

    again = hub_service.download_model(repo_id, force=True)
    hub_service.run_download(again.id, task_id="in-process", worker_name="pytest")

    again.refresh_from_db()
    assert (again.state, again.error_code) == ("succeeded", ""), again.error_message
    assert (repo_dir(repo_id) / "snapshots" / sha / "extra/note-3.txt").read_bytes() == NOTES[
        "extra/note-3.txt"
    ]


def test_a_server_error_on_a_small_file_is_not_asked_again_within_the_attempt(
    hub, publish, private_queue, settings
) -> None:
    """A 5xx ends the attempt, and the next attempt asks after the backoff: the direct path raises the
    error huggingface_hub would, instead of sending the same request again at once."""
    settings.DOWNLOAD_MAX_ATTEMPTS = 1
    repo_id, _sha = publish("batch-once", extra=NOTES)
    hub.faults.fail_500(times=1, pattern="extra/note-1.txt", methods=("GET",))
    job = hub_service.download_model(repo_id)

    hub_service.run_download(job.id, task_id="in-process", worker_name="pytest")

    job.refresh_from_db()
    assert (job.state, job.error_code) == ("failed", "network"), job.error_message
    assert len([r for r in resolve_requests(hub, repo_id) if r.path.endswith("/extra/note-1.txt")]) == 1


def test_once_an_lfs_file_is_redirected_the_others_go_straight_to_huggingface_hubs_client(
    hub, publish, private_queue
) -> None:
    """A Hub that sends LFS files to its CDN (without Xet) answers every small LFS file with a redirect:
    asking the direct connection first would cost each of them a round trip for nothing."""
    repo_id, sha = publish("batch-lfs-cdn", extra=SHARDS)
    for path in SHARDS:  # same origin, another route: followed, and its bytes are the file's
        hub.faults.redirect(f"/{repo_id}/resolve/main/{path}", path=f"/{repo_id}/resolve/{sha}/{path}")
    job = hub_service.download_model(repo_id)

    hub_service.run_download(job.id, task_id="in-process", worker_name="pytest")

    job.refresh_from_db()
    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    asked = [r.path for r in resolve_requests(hub, repo_id) if "/extra/shard-" in r.path]
    # A direct GET met the first redirect (one per connection at most, those already asking); then one GET
    # each through huggingface_hub's client, and its redirect followed. Asking each first would be 48.
    direct_first = len([p for p in asked if f"/resolve/{sha}/" in p]) - len(SHARDS)
    assert 1 <= direct_first <= hub_batch.CONNECTIONS
    assert len([p for p in asked if "/resolve/main/" in p]) == len(SHARDS)
    for path, content in SHARDS.items():
        assert (repo_dir(repo_id) / "snapshots" / sha / path).read_bytes() == content


@pytest.mark.parametrize(
    ("took", "busy", "connections"),
    [
        (0.002, 0.0011, 2),  # the local Hub: a file costs about as much CPU as it waits
        (0.002, 0.002, 1),
        (0.060, 0.001, hub_batch.CONNECTIONS),  # across the internet: the wait is the answer's round trip
        (2.5, 0.001, hub_batch.CONNECTIONS),  # a slow body: waiting too, not work
    ],
)
def test_the_connections_cover_the_first_files_wait(took: float, busy: float, connections: int) -> None:
    assert hub_batch._connections(took, busy, "org/name") == connections
