"""delete_model: huggingface_hub's delete_revisions keeps blobs another revision still links; busy models stay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from models_app.models import DownloadJob, Repository, Snapshot
from models_app.services.cache import ModelInUse, ModelNotFound, NotAllowed, delete_model, get_model_path
from models_app.services.reconcile import reconcile_cache
from tests.cache.conftest import model_files, snapshot_of

pytestmark = pytest.mark.django_db

NEW_CONFIG = b'{"model_type": "llama", "v": 2}'


@pytest.fixture
def repo(hub, fetch, new_repo_id, cache_root) -> dict:
    """Two cached revisions that share the weights and tokenizer blobs; only config.json differs."""
    repo_id = new_repo_id()
    old = hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    new = hub.commit(repo_id, {"config.json": NEW_CONFIG})
    fetch(repo_id)
    reconcile_cache()
    folder = cache_root / f"models--{repo_id.replace('/', '--')}"
    return {"id": repo_id, "old": old, "new": new, "folder": folder}


def test_deleting_one_revision_keeps_the_blobs_the_other_revision_shares(repo) -> None:
    weights = (repo["folder"] / "snapshots" / repo["new"] / "model.safetensors").resolve()

    plan = delete_model(repo["id"], repo["old"])

    # Only the old config.json blob was the old revision's own.
    assert plan.bytes_freed == len(model_files("a")["config.json"])
    assert [item.commit_sha for item in plan.items] == [repo["old"]]
    assert not (repo["folder"] / "snapshots" / repo["old"]).exists()
    assert weights.is_file() and weights.stat().st_size == 5000
    new_dir = get_model_path(repo["id"])
    assert new_dir.name == repo["new"]
    assert all((new_dir / name).is_file() for name in model_files("a"))
    assert (new_dir / "config.json").read_bytes() == NEW_CONFIG
    assert snapshot_of(repo["id"], repo["old"]).status == Snapshot.Status.DELETED
    assert snapshot_of(repo["id"], repo["new"]).status == Snapshot.Status.READY


def test_deleting_every_revision_removes_the_repo_folder(repo) -> None:
    plan = delete_model(repo["id"])

    assert sorted(item.commit_sha for item in plan.items) == sorted([repo["old"], repo["new"]])
    assert plan.bytes_freed == sum(len(v) for v in model_files("a").values()) + len(NEW_CONFIG)
    assert not repo["folder"].exists()
    assert set(Snapshot.objects.values_list("status", flat=True)) == {Snapshot.Status.DELETED}
    with pytest.raises(ModelNotFound):
        get_model_path(repo["id"])


def test_a_dry_run_deletes_nothing(repo) -> None:
    plan = delete_model(repo["id"], "main", dry_run=True)

    assert [item.commit_sha for item in plan.items] == [repo["new"]]
    assert plan.bytes_freed == len(NEW_CONFIG)
    assert (repo["folder"] / "snapshots" / repo["new"]).is_dir()
    assert snapshot_of(repo["id"], repo["new"]).status == Snapshot.Status.READY


def test_a_revision_with_a_vanished_blob_can_still_be_deleted(repo) -> None:
    # scan_cache_dir skips a repo with a broken symlink: delete_model must cope.
    (repo["folder"] / "snapshots" / repo["old"] / "config.json").resolve().unlink()

    plan = delete_model(repo["id"], repo["old"])

    assert not (repo["folder"] / "snapshots" / repo["old"]).exists()
    assert (repo["folder"] / "snapshots" / repo["new"] / "model.safetensors").is_file()
    assert plan.bytes_freed == 0


@pytest.mark.parametrize("state", [DownloadJob.State.QUEUED, DownloadJob.State.RUNNING])
def test_it_refuses_while_a_download_job_writes_into_the_repo(repo, settings, state) -> None:
    repository = Repository.objects.get(repo_id=repo["id"])
    DownloadJob.objects.create(repository=repository, revision="dev", node=settings.NODE_NAME, state=state)

    with pytest.raises(ModelInUse, match="download"):
        delete_model(repo["id"], repo["old"])
    assert (repo["folder"] / "snapshots" / repo["old"]).is_dir()


def test_it_refuses_a_snapshot_used_within_the_keep_alive_window(repo, settings) -> None:
    settings.INFERENCE_KEEP_ALIVE = 300
    Snapshot.objects.filter(commit_sha=repo["new"]).update(
        last_used_at=timezone.now() - timedelta(seconds=200)
    )

    with pytest.raises(ModelInUse) as info:
        delete_model(repo["id"])
    assert info.value.code == "in_use"
    assert (repo["folder"] / "snapshots" / repo["new"]).is_dir()
    # The other revision is not in use: it may go.
    assert delete_model(repo["id"], repo["old"]).items


def test_only_staff_or_the_owner_may_delete(repo, alice, bob, staff) -> None:
    Repository.objects.filter(repo_id=repo["id"]).update(private=False, owner=alice)

    with pytest.raises(NotAllowed):
        delete_model(repo["id"], repo["old"], user=bob)
    assert delete_model(repo["id"], repo["old"], user=alice).items
    assert delete_model(repo["id"], repo["new"], user=staff).items


def test_a_private_repo_is_not_found_for_other_users(repo, alice, bob) -> None:
    Repository.objects.filter(repo_id=repo["id"]).update(private=True, owner=alice)

    with pytest.raises(ModelNotFound):
        delete_model(repo["id"], user=bob)
    assert Path(repo["folder"]).is_dir()
