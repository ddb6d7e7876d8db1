"""hub_tree: a pull asks the Hub for its file list once, not for each file's metadata with a HEAD, and every
file is still the one the Hub described (verified against model info) and named by a checked id."""

from __future__ import annotations

import os

import pytest

from models_app.services import hub as hub_service
from tests.downloads.conftest import resolve_requests, wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]

SHARDS = {f"extra/shard-{i:02d}.bin": os.urandom(3_000 + i) for i in range(12)}  # LFS and regular both
SMALL = {f"extra/note-{i}.txt": f"note {i}\n".encode() for i in range(3)}


def test_a_pull_heads_no_file_of_the_listing(hub, publish) -> None:
    repo_id, sha = publish("tree", extra={**SHARDS, **SMALL})

    job = wait_job(hub_service.download_model(repo_id), timeout=60)

    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    heads = [r.path.rsplit(f"/{sha}/", 1)[-1] for r in resolve_requests(hub, repo_id, "HEAD")]
    # The tree is listed before config.json is fetched (and checked): no HEAD for it either.
    assert heads == []
    gets = {r.path.rsplit(f"/{sha}/", 1)[-1] for r in resolve_requests(hub, repo_id, "GET")}
    assert set(SHARDS) | set(SMALL) <= gets
    held = {f["path"] for f in job.snapshot.files}
    assert set(SHARDS) | set(SMALL) <= held and job.snapshot.status == "ready"


def test_a_wrong_byte_in_a_file_fetched_without_its_head_still_fails_integrity(hub, publish) -> None:
    repo_id, _ = publish("tree-corrupt", extra=SHARDS)
    hub.faults.wrong_bytes(pattern="extra/shard-03.bin")

    job = wait_job(hub_service.download_model(repo_id), timeout=60)

    assert (job.state, job.error_code) == ("failed", "integrity")
    assert "extra/shard-03.bin" in job.error_message
