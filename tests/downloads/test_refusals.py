"""What a pull refuses, and how early: bad input before any I/O, then Hub answers, then the MLX and disk
checks before a byte is written."""

from __future__ import annotations

import json

import pytest

from models_app.models import DownloadJob, Repository
from models_app.services import hub as hub_service
from models_app.services.errors import DownloadError
from tests.downloads.conftest import repo_dir, resolve_requests, wait_job

BAD_REPO_IDS = [
    "",
    "../x",
    "a/b/c",
    "x" * 10_000,
    "org/" + "n" * 97,
    "just-a-name",
    "org/name\x00",
    "\u043erg/name",  # Cyrillic o
    "org/\uff4e\uff41\uff4d\uff45",  # fullwidth "name"
    "org/na me",
    "org/-name",
    "org/name.",
    "org/na..me",
    "org/na--me",
    "/org/name",
    "org/name/",
    "org\\name",
    "org/name.git",
]


@pytest.mark.django_db
@pytest.mark.parametrize("repo_id", BAD_REPO_IDS)
def test_it_rejects_bad_repo_ids_before_any_io(hub, repo_id: str) -> None:
    hub.clear_requests()
    with pytest.raises(DownloadError) as caught:
        hub_service.download_model(repo_id)
    assert caught.value.code == "invalid_repo_id"
    assert len(caught.value.message) < 300  # a 10 kB id is not echoed back
    assert hub.requests == []
    assert not Repository.objects.exists() and not DownloadJob.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "revision", ["", "../main", "a..b", "main\n", "x" * 201, "refs/pr/x", "bränch", "a b"]
)
def test_it_rejects_bad_revisions_before_any_io(hub, revision: str) -> None:
    hub.clear_requests()
    with pytest.raises(DownloadError) as caught:
        hub_service.download_model("org/name", revision)
    assert caught.value.code == "invalid_revision"
    assert hub.requests == [] and not DownloadJob.objects.exists()


@pytest.mark.django_db
def test_it_rejects_an_unknown_cache_root_by_name(hub) -> None:
    with pytest.raises(DownloadError) as caught:
        hub_service.download_model("org/name", cache="/tmp")
    assert caught.value.code == "invalid_request" and hub.requests == []


@pytest.mark.django_db
def test_it_rejects_someone_elses_credential(hub, alice, bob) -> None:
    from django.core.exceptions import PermissionDenied

    from models_app.services.credentials import create_credential

    credential = create_credential(owner=bob, name="bobs", token="hf_BobsToken0000000000")
    with pytest.raises(PermissionDenied):
        hub_service.download_model("org/name", credential=credential, user=alice)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("download_worker")
class TestHubAnswers:
    def test_an_unknown_repo_is_not_found(self, hub) -> None:
        job = wait_job(hub_service.download_model("test-dl/does-not-exist-anywhere"))
        assert (job.state, job.error_code, job.attempts) == ("failed", "not_found", 1)

    def test_an_unknown_revision_is_revision_not_found(self, hub, publish) -> None:
        repo_id, _ = publish()
        job = wait_job(hub_service.download_model(repo_id, "no-such-branch"))
        assert (job.state, job.error_code) == ("failed", "revision_not_found")

    def test_a_branch_and_a_tag_resolve_to_their_commits(self, hub, publish, tiny_files) -> None:
        repo_id, main_sha = publish()
        branch_sha = hub.commit(repo_id, {"README.md": b"# dev\n"}, branch="dev")
        hub.add_tag(repo_id, "v1.0", main_sha)

        dev = wait_job(hub_service.download_model(repo_id, "dev"))
        tag = wait_job(hub_service.download_model(repo_id, "v1.0"))
        pinned = wait_job(hub_service.download_model(repo_id, main_sha))

        assert (dev.state, dev.commit_sha, dev.snapshot.ref) == ("succeeded", branch_sha, "dev")
        assert (tag.state, tag.commit_sha) == ("succeeded", main_sha)
        assert (pinned.state, pinned.commit_sha, pinned.snapshot_id) == (
            "succeeded",
            main_sha,
            tag.snapshot_id,
        )
        assert (repo_dir(repo_id) / "refs" / "dev").read_text() == branch_sha
        assert (repo_dir(repo_id) / "refs" / "v1.0").read_text() == main_sha

    def test_a_repo_with_only_a_readme_is_not_mlx(self, hub, publish) -> None:
        repo_id, _ = publish("readme", files={"README.md": b"# nothing here\n"})
        job = wait_job(hub_service.download_model(repo_id))
        assert (job.state, job.error_code) == ("failed", "not_mlx")
        assert "config.json" in job.error_message
        assert resolve_requests(hub, repo_id) == []  # refused from the file list alone

    def test_an_unknown_model_type_is_not_mlx_and_no_weights_are_fetched(
        self, hub, publish, tiny_files
    ) -> None:
        config = json.dumps({"model_type": "not_a_model"}).encode()
        repo_id, _ = publish("unknown-type", extra={"config.json": config})
        job = wait_job(hub_service.download_model(repo_id))
        assert (job.state, job.error_code) == ("failed", "not_mlx")
        assert "not_a_model" in job.error_message
        fetched = [r.path.rsplit("/", 1)[-1] for r in resolve_requests(hub, repo_id)]
        assert fetched == ["config.json"]

    def test_pytorch_weights_are_not_mlx(self, hub, publish, tiny_files) -> None:
        files = {k: v for k, v in tiny_files.items() if k != "model.safetensors"}
        repo_id, _ = publish("torch", files={**files, "pytorch_model.bin": b"\0" * 2048})
        job = wait_job(hub_service.download_model(repo_id))
        assert (job.state, job.error_code) == ("failed", "not_mlx")
        assert "safetensors" in job.error_message

    def test_allow_patterns_limit_what_is_fetched(self, hub, publish) -> None:
        repo_id, _ = publish()
        job = wait_job(hub_service.download_model(repo_id, allow_patterns=["*.json"]))
        assert job.state == "succeeded"
        assert all(f["path"].endswith(".json") for f in job.snapshot.files)
        fetched = {r.path.rsplit("/", 1)[-1] for r in resolve_requests(hub, repo_id)}
        assert "model.safetensors" not in fetched and "README.md" not in fetched


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_download_bigger_than_free_space_minus_the_reserve(
    hub, publish, tiny_files, settings, private_queue
) -> None:
    from pathlib import Path

    from models_app.services.hub_checks import human

    repo_id, _ = publish("huge")
    size = sum(Path(p).stat().st_size for p in tiny_files.values())
    settings.DOWNLOAD_DISK_RESERVE = 10**18
    job = hub_service.download_model(repo_id)

    hub_service.run_download(job.id, task_id="in-process", worker_name="pytest")

    job.refresh_from_db()
    assert (job.state, job.error_code) == ("failed", "disk_full")
    # The numbers, in human units: what is needed, the reserve, what is free.
    assert f"needs {human(size)} plus a reserve of 1000000.0 TB" in job.error_message
    assert " free" in job.error_message
    assert resolve_requests(hub, repo_id) == [] and resolve_requests(hub, repo_id, "HEAD") == []
    assert not (repo_dir(repo_id) / "blobs").exists()
