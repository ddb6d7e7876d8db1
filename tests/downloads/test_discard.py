"""A pull that ends failed or cancelled leaves nothing of its own behind (issue 12), and nothing that was there
before it is touched (another tool's download of the same commit)."""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from huggingface_hub import snapshot_download

from models_app.services import hub as hub_service
from tests.downloads.conftest import repo_dir, wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]


def files_in(folder) -> set[str]:  # type: ignore[no-untyped-def]
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_a_failed_pull_leaves_no_folder_behind(hub, publish) -> None:
    repo_id, _ = publish("discard-all")
    hub.faults.wrong_bytes(pattern="model.safetensors")

    job = wait_job(hub_service.download_model(repo_id))

    assert (job.state, job.error_code) == ("failed", "integrity")
    # Not an empty snapshots/<sha>/ for `hf cache ls` to show, nor the files that did arrive intact.
    assert not repo_dir(repo_id).exists()


def test_a_failed_pull_keeps_what_another_tool_had_downloaded(hub, publish) -> None:
    repo_id, sha = publish("discard-keep")
    snapshot_download(
        repo_id,
        cache_dir=settings.HF_HUB_CACHE,
        endpoint=hub.url,
        token=False,
        allow_patterns=["config.json", "tokenizer*"],
    )
    snapshot = repo_dir(repo_id) / "snapshots" / sha
    before = files_in(snapshot)
    assert "config.json" in before and "model.safetensors" not in before
    hub.faults.wrong_bytes(pattern="model.safetensors")

    job = wait_job(hub_service.download_model(repo_id))

    assert (job.state, job.error_code) == ("failed", "integrity")
    assert files_in(snapshot) == before  # the other tool's files, readable; none of the pull's
    assert not os.path.lexists(snapshot / "model.safetensors")
    assert (repo_dir(repo_id) / "refs" / "main").read_text() == sha
