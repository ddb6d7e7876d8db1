"""Pulling a public repo through the real worker: cache layout, database, mlx-lm, requests, concurrency."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx_lm
import pytest
from django.conf import settings
from django.db import connection
from huggingface_hub import scan_cache_dir

from devkit.processes import wait_for
from models_app.models import DownloadJob, Snapshot
from models_app.services import hub as hub_service
from tests.downloads.conftest import incomplete_files, repo_dir, resolve_requests, wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_it_downloads_a_public_repo(hub, publish, tiny_files, alice) -> None:
    repo_id, sha = publish()

    job = hub_service.download_model(repo_id, user=alice)
    job = wait_job(job)

    assert (job.state, job.error_code, job.error_message) == ("succeeded", "", "")
    assert job.commit_sha == sha and job.attempts == 1
    assert job.bytes_done == job.bytes_total == sum(Path(p).stat().st_size for p in tiny_files.values())
    assert job.files_done == job.files_total == len(tiny_files)
    snapshot = job.snapshot
    assert snapshot.status == Snapshot.Status.READY and snapshot.commit_sha == sha and snapshot.ref == "main"
    assert snapshot.path == str(repo_dir(repo_id) / "snapshots" / sha)
    assert snapshot.size_bytes == job.bytes_total
    assert snapshot.model_type == "llama" and snapshot.context_length == 512
    assert snapshot.downloaded_at and snapshot.verified_at
    files = {f["path"]: f for f in snapshot.files}
    assert sorted(files) == sorted(tiny_files)
    assert files["model.safetensors"]["sha256"] == sha256(Path(tiny_files["model.safetensors"]))
    assert "sha256" not in files["config.json"] and len(files["config.json"]["blob_id"]) == 40
    assert not snapshot.repository.private and not snapshot.repository.gated
    assert snapshot.repository.owner is None  # public repos belong to everyone
    assert (repo_dir(repo_id) / "refs" / "main").read_text() == sha

    # The standard layout: huggingface_hub's own scanner sees it, with the same size.
    cached = {r.repo_id: r for r in scan_cache_dir(settings.HF_HUB_CACHE).repos}
    revisions = {r.commit_hash: r for r in cached[repo_id].revisions}
    assert revisions[sha].nb_files == len(tiny_files) and revisions[sha].refs == frozenset({"main"})
    assert not incomplete_files(repo_id)

    # And mlx-lm loads it from the snapshot path and generates.
    model, tokenizer = mlx_lm.load(snapshot.path)
    text = mlx_lm.generate(model, tokenizer, prompt="hello", max_tokens=4)
    assert isinstance(text, str) and text


def test_a_second_pull_of_the_same_commit_fetches_nothing_and_force_fetches_everything(hub, publish) -> None:
    repo_id, sha = publish()
    first = wait_job(hub_service.download_model(repo_id))
    assert first.state == "succeeded"
    blob = (repo_dir(repo_id) / "snapshots" / sha / "model.safetensors").resolve()
    inode = blob.stat().st_ino
    hub.clear_requests()

    again = wait_job(hub_service.download_model(repo_id))
    assert again.id != first.id and again.state == "succeeded" and again.snapshot_id == first.snapshot_id
    assert resolve_requests(hub, repo_id) == [] and resolve_requests(hub, repo_id, "HEAD") == []
    assert again.bytes_total == 0  # nothing needed fetching

    forced = wait_job(hub_service.download_model(repo_id, force=True))
    assert forced.state == "succeeded"
    fetched = sorted(r.path.rsplit("/", 1)[-1] for r in resolve_requests(hub, repo_id))
    assert fetched == sorted(f["path"] for f in forced.snapshot.files)
    assert blob.stat().st_ino != inode  # replaced, not trusted
    assert forced.bytes_total == forced.snapshot.size_bytes


def test_concurrent_pulls_of_one_repo_share_one_job_and_one_set_of_blobs(hub, publish, tiny_files) -> None:
    repo_id, _ = publish()
    barrier = threading.Barrier(5)

    def pull() -> int:
        try:
            barrier.wait()
            return hub_service.download_model(repo_id).id
        finally:
            connection.close()

    # The worker's first call to the Hub waits until every pull has returned: a pull that comes after the job
    # ended starts a new one (rightly), and on a loaded machine one of five threads once came that late.
    held = hub.faults.hold(f"/api/models/{repo_id}/*")
    try:
        with ThreadPoolExecutor(5) as pool:
            ids = set(pool.map(lambda _: pull(), range(5)))
    finally:
        held.release()

    assert len(ids) == 1
    assert DownloadJob.objects.filter(repository__repo_id=repo_id).count() == 1
    job = wait_job(ids.pop())
    assert job.state == "succeeded"
    blobs = sorted(p.name for p in (repo_dir(repo_id) / "blobs").iterdir())
    assert len(blobs) == len(tiny_files)
    per_file = [r.path for r in resolve_requests(hub, repo_id)]
    assert len(per_file) == len(set(per_file)) == len(tiny_files)  # each file fetched once


def test_pulling_a_new_commit_keeps_the_old_snapshot_until_the_new_one_verifies(hub, publish) -> None:
    repo_id, old_sha = publish()
    old = wait_job(hub_service.download_model(repo_id)).snapshot
    new_sha = hub.commit(repo_id, {"extra.bin": os.urandom(1_000_000)})
    hub.faults.throttle(500_000, pattern="extra.bin")  # ~2 s: long enough to look inside

    job = hub_service.download_model(repo_id)
    wait_for(lambda: bool(incomplete_files(repo_id)), 15, "the new file never started downloading")
    old.refresh_from_db()
    assert old.status == Snapshot.Status.READY
    assert not Snapshot.objects.filter(commit_sha=new_sha, status=Snapshot.Status.READY).exists()
    assert (repo_dir(repo_id) / "refs" / "main").read_text() == old_sha

    job = wait_job(job)
    assert job.state == "succeeded" and job.commit_sha == new_sha
    assert job.bytes_total == 1_000_000  # only the new blob; the others were shared
    old.refresh_from_db()
    assert old.status == Snapshot.Status.READY
    assert job.snapshot.status == Snapshot.Status.READY and job.snapshot_id != old.id
    assert (repo_dir(repo_id) / "refs" / "main").read_text() == new_sha
    assert (Path(old.path) / "config.json").is_file() and (Path(job.snapshot.path) / "extra.bin").is_file()
