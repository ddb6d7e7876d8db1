"""The Hub misbehaving mid-download. Each fault ends in the right outcome: succeeded with the Hub's hashes, or
failed with the right code (network, integrity) and a message that says what happened.

Proved elsewhere, not repeated here (all marked reliability):
- a clean mid-file close is resumed: tests/downloads/test_faults.py::test_a_dropped_connection_is_resumed_and_the_files_are_correct
- 500 then 200 on a file: tests/downloads/test_faults.py::test_a_server_error_is_retried_with_backoff
- wrong bytes at the right length (LFS, sha256): tests/downloads/test_faults.py::test_corrupt_bytes_fail_integrity_and_the_bad_blob_is_deleted
- a stall after the headers: tests/downloads/test_faults.py::test_a_stalled_server_fails_network_within_the_stall_timeout
"""

from __future__ import annotations

import hashlib
import os

import pytest

from models_app.models import Snapshot
from models_app.services import hub as hub_service
from tests.downloads.conftest import resolve_requests, wait_job
from tests.reliability.conftest import assert_ready_snapshots_verify, incomplete_files, repo_dir

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

# Above hub_batch.SMALL_FILE_MAX: fetched by huggingface_hub, whose resume (Range) these tests are about.
PADDING = os.urandom(5_000_000)
PADDING_SHA256 = hashlib.sha256(PADDING).hexdigest()


def padding_gets(hub, repo_id: str) -> list:  # type: ignore[no-untyped-def]
    return [r for r in resolve_requests(hub, repo_id) if r.path.endswith("/padding.bin")]


def assert_succeeded_with_hashes(job, repo_id: str, sha: str) -> None:  # type: ignore[no-untyped-def]
    assert (job.state, job.error_code, job.error_message) == ("succeeded", "", "")
    blob = repo_dir(repo_id) / "snapshots" / sha / "padding.bin"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == PADDING_SHA256
    assert assert_ready_snapshots_verify(repo_id) == 1
    assert incomplete_files(repo_id) == []


@pytest.mark.usefixtures("download_worker")
def test_a_connection_reset_mid_file_is_resumed(hub, publish) -> None:
    repo_id, sha = publish("reset", extra={"padding.bin": PADDING})
    hub.faults.drop_after(1_000_000, pattern="padding.bin", times=1, reset=True)

    job = wait_job(hub_service.download_model(repo_id))

    assert_succeeded_with_hashes(job, repo_id, sha)
    # huggingface_hub may resume inside the attempt, or give up on a reset and leave it to our retry.
    assert len(padding_gets(hub, repo_id)) == 2 and job.attempts in (1, 2)


@pytest.mark.usefixtures("download_worker")
def test_a_server_that_ignores_range_is_fetched_again_from_the_start(hub, publish) -> None:
    repo_id, sha = publish("norange", extra={"padding.bin": PADDING})
    hub.faults.drop_after(1_000_000, pattern="padding.bin", times=1)
    hub.faults.ignore_range(pattern="padding.bin")

    job = wait_job(hub_service.download_model(repo_id))

    assert_succeeded_with_hashes(job, repo_id, sha)
    gets = padding_gets(hub, repo_id)
    # The resume asked for the rest and got the whole file (200): appended, it would fail the sha256.
    assert len(gets) == 2 and gets[1].headers.get("Range") and gets[1].status == 200


@pytest.mark.usefixtures("download_worker")
def test_a_server_error_on_the_metadata_then_200_is_retried(hub, publish) -> None:
    repo_id, _ = publish("api500")
    hub.faults.fail_500(times=1, path=f"/api/models/{repo_id}/*", methods=("GET",))

    job = wait_job(hub_service.download_model(repo_id))

    assert (job.state, job.error_code, job.error_message) == ("succeeded", "", "")
    assert job.attempts == 2
    assert assert_ready_snapshots_verify(repo_id) == 1


@pytest.mark.usefixtures("download_worker")
def test_wrong_bytes_in_a_regular_file_fail_integrity_by_git_sha1(hub, publish) -> None:
    repo_id, sha = publish("wrongsmall")
    hub.faults.wrong_bytes(pattern="special_tokens_map.json")

    job = wait_job(hub_service.download_model(repo_id))

    assert (job.state, job.error_code) == ("failed", "integrity")
    assert "special_tokens_map.json" in job.error_message and "sha1" in job.error_message
    assert job.attempts == 1  # an integrity error is not retried
    assert not Snapshot.objects.filter(repository__repo_id=repo_id, status=Snapshot.Status.READY).exists()
    assert not os.path.lexists(repo_dir(repo_id) / "snapshots" / sha / "special_tokens_map.json")
    assert incomplete_files(repo_id) == []


@pytest.mark.usefixtures("download_worker")
def test_wrong_bytes_in_config_json_fail_integrity_and_the_next_pull_recovers(hub, publish) -> None:
    repo_id, _ = publish("wrongconfig")
    hub.faults.wrong_bytes(pattern="config.json", times=1)

    job = wait_job(hub_service.download_model(repo_id))
    hub.faults.clear()
    again = wait_job(hub_service.download_model(repo_id))

    assert (job.state, job.error_code) == ("failed", "integrity"), job.error_message
    assert (again.state, again.error_code) == ("succeeded", ""), again.error_message
    assert assert_ready_snapshots_verify(repo_id) == 1


def test_a_connection_cut_every_time_fails_network_with_a_clear_message(
    hub, publish, private_queue, settings
) -> None:
    settings.DOWNLOAD_MAX_ATTEMPTS = 1
    repo_id, _ = publish("cut", extra={"padding.bin": PADDING})
    hub.faults.drop_after(0, pattern="padding.bin", times=None, reset=True)
    job = hub_service.download_model(repo_id)

    # In this process: huggingface_hub's own five retries take five seconds; a worker would add nothing.
    hub_service.run_download(job.id, task_id=job.celery_task_id, worker_name="pytest")

    job.refresh_from_db()
    assert (job.state, job.error_code) == ("failed", "network")
    assert settings.HF_ENDPOINT in job.error_message
    assert "connection" in job.error_message.lower() or "truncated" in job.error_message.lower()
    assert not Snapshot.objects.filter(repository__repo_id=repo_id, status=Snapshot.Status.READY).exists()
    assert incomplete_files(repo_id) == []
