"""reconcile_cache: repos downloaded by other tools are indexed; rows whose files vanished are flagged."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from django.conf import settings

from models_app.models import DownloadJob, Repository, Snapshot
from models_app.services.cache import delete_model
from models_app.services.reconcile import reconcile_cache
from tests.cache.conftest import model_files, snapshot_of

pytestmark = pytest.mark.django_db


def test_it_imports_a_repo_downloaded_by_another_tool(hub, fetch, new_repo_id) -> None:
    repo_id = new_repo_id()
    sha = hub.create_repo(repo_id, model_files("a"))
    path = fetch(repo_id)

    report = reconcile_cache()

    assert report.imported == [f"{repo_id}@{sha}"]
    assert report.roots == {"default": "scanned"}
    snapshot = snapshot_of(repo_id, sha)
    assert snapshot.repository.kind == Repository.Kind.HUB
    # Nothing says who may see another tool's download: staff only until the Hub is asked.
    assert snapshot.repository.private is True
    assert snapshot.status == Snapshot.Status.READY
    assert snapshot.ref == "main"
    assert snapshot.cache_root == "default"
    assert Path(snapshot.path) == path.resolve()
    assert snapshot.model_type == "llama"
    files = {f["path"]: f for f in snapshot.files}
    assert sorted(files) == sorted(model_files("a"))
    assert files["model.safetensors"]["size"] == 5000
    # Enough to verify later: the LFS sha256 and the git blob id, from the cache alone.
    assert (
        files["model.safetensors"]["sha256"]
        == hub.repo(repo_id).commits[sha].files["model.safetensors"].blob.sha256
    )
    assert files["config.json"]["blob_id"] == hub.repo(repo_id).commits[sha].files["config.json"].oid
    assert snapshot.size_bytes == sum(len(v) for v in model_files("a").values())

    again = reconcile_cache()
    assert again.imported == [] and again.marked_missing == []
    assert again.unchanged == 1
    assert Snapshot.objects.count() == 1


def test_it_imports_every_cached_revision_with_its_ref(hub, fetch, new_repo_id) -> None:
    repo_id = new_repo_id()
    first = hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id, first)
    second = hub.commit(repo_id, {"config.json": b'{"model_type": "llama", "v": 2}'})
    fetch(repo_id)

    report = reconcile_cache()

    assert sorted(report.imported) == sorted([f"{repo_id}@{first}", f"{repo_id}@{second}"])
    assert snapshot_of(repo_id, second).ref == "main"
    assert snapshot_of(repo_id, first).ref == ""


def test_it_marks_rows_whose_files_vanished_and_restores_them_when_they_return(
    hub, fetch, new_repo_id, cache_root
) -> None:
    kept_id, blob_id, gone_id = new_repo_id("kept"), new_repo_id("blob"), new_repo_id("gone")
    for repo_id in (kept_id, blob_id, gone_id):
        hub.create_repo(repo_id, model_files(repo_id))
        fetch(repo_id)
    reconcile_cache()
    blob_sha = hub.head_sha(blob_id)
    # One blob deleted behind our back (scan_cache_dir then skips the whole repo as corrupted)...
    weights = snapshot_of(blob_id, blob_sha)
    (Path(weights.path) / "model.safetensors").resolve().unlink()
    # ...and one repo removed entirely, e.g. with `hf cache delete`.
    shutil.rmtree(cache_root / f"models--{gone_id.replace('/', '--')}")

    report = reconcile_cache()

    assert sorted(report.marked_missing) == sorted(
        [f"{blob_id}@{blob_sha}", f"{gone_id}@{hub.head_sha(gone_id)}"]
    )
    assert report.unchanged == 1
    assert snapshot_of(kept_id, hub.head_sha(kept_id)).status == Snapshot.Status.READY
    assert snapshot_of(blob_id, blob_sha).status == Snapshot.Status.MISSING
    assert snapshot_of(gone_id, hub.head_sha(gone_id)).status == Snapshot.Status.MISSING

    fetch(gone_id)  # downloaded again by another tool
    report = reconcile_cache()
    assert report.restored == [f"{gone_id}@{hub.head_sha(gone_id)}"]
    assert snapshot_of(gone_id, hub.head_sha(gone_id)).status == Snapshot.Status.READY


def test_a_missing_cache_root_is_nothing_to_reconcile(settings, tmp_path) -> None:
    settings.CACHE_ROOTS = {"default": tmp_path / "not-there", "external": tmp_path / "unplugged"}

    report = reconcile_cache()

    assert report.roots == {"default": "absent", "external": "absent"}
    assert report.imported == []


def test_it_does_not_import_what_mlx_lm_cannot_load(hub, fetch, new_repo_id) -> None:
    repo_id = new_repo_id("pytorch")
    hub.create_repo(repo_id, {"config.json": b'{"model_type": "bert"}', "pytorch_model.bin": b"x" * 100})
    fetch(repo_id)

    report = reconcile_cache()

    assert report.imported == []
    assert any(repo_id in line and "not an MLX model" in line for line in report.skipped)
    assert not Repository.objects.filter(repo_id=repo_id).exists()


def test_it_leaves_a_repo_with_a_running_download_to_its_job(hub, fetch, new_repo_id, settings) -> None:
    repo_id = new_repo_id()
    hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    repo = Repository.objects.create(repo_id=repo_id)
    DownloadJob.objects.create(repository=repo, node=settings.NODE_NAME, state=DownloadJob.State.RUNNING)

    report = reconcile_cache()

    assert report.imported == []
    assert not Snapshot.objects.filter(repository=repo).exists()


def test_it_does_not_import_a_sharded_snapshot_with_a_shard_missing(hub, fetch, new_repo_id) -> None:
    repo_id = new_repo_id("sharded")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = model_files("s", **{
        "model-00001-of-00002.safetensors": b"1" * 3000,
        "model-00002-of-00002.safetensors": b"2" * 3000,
        "model.safetensors.index.json": json.dumps(index).encode(),
    })  # fmt: skip
    del files["model.safetensors"]
    hub.create_repo(repo_id, files)
    path = fetch(repo_id)
    (path / "model-00002-of-00002.safetensors").unlink()  # what a failed integrity check leaves

    report = reconcile_cache()

    assert report.imported == []
    assert any("model-00002-of-00002.safetensors" in line for line in report.skipped)


def test_it_removes_partial_files_no_live_download_owns(hub, fetch, new_repo_id, cache_root) -> None:
    repo_id = new_repo_id()
    hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    blobs = cache_root / f"models--{repo_id.replace('/', '--')}" / "blobs"
    stale, fresh = blobs / "aa.0badc0de.incomplete", blobs / "bb.0badc0de.incomplete"
    for partial in (stale, fresh):
        partial.write_bytes(b"\0" * 100)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # a crashed download's leftover

    report = reconcile_cache()

    assert report.partials_removed == [str(stale)]
    assert not stale.exists() and fresh.exists()  # the fresh one may be another tool's download in progress
    assert report.imported  # the complete revision beside it is imported as usual


def test_a_snapshot_deleted_here_and_downloaded_again_elsewhere_comes_back(hub, fetch, new_repo_id) -> None:
    repo_id = new_repo_id()
    sha = hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    reconcile_cache()
    delete_model(repo_id)
    fetch(repo_id)  # `hf download` again

    report = reconcile_cache()

    assert report.imported == [f"{repo_id}@{sha}"]
    assert snapshot_of(repo_id, sha).status == Snapshot.Status.READY
    assert Snapshot.objects.count() == 1


@pytest.mark.parametrize("state", [DownloadJob.State.CANCELLED, DownloadJob.State.FAILED])
def test_it_does_not_import_the_snapshot_of_a_pull_that_was_cancelled_or_failed(
    hub, fetch, new_repo_id, state
) -> None:
    repo_id = new_repo_id()
    sha = hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)  # what a pull that was stopped (and could not clean up: a killed worker) left on disk
    repository = Repository.objects.create(repo_id=repo_id)
    DownloadJob.objects.create(
        repository=repository, revision="main", node=settings.NODE_NAME, state=state, commit_sha=sha
    )

    report = reconcile_cache()

    assert report.imported == []
    assert f"{repo_id}@{sha}: its last pull here was {state}" in report.skipped
    assert not Snapshot.objects.filter(repository__repo_id=repo_id).exists()


def test_it_verifies_a_snapshot_before_it_imports_it_as_ready(hub, fetch, new_repo_id) -> None:
    good_id, bad_id = new_repo_id("good"), new_repo_id("bad")
    hub.create_repo(good_id, model_files("a"))
    bad_sha = hub.create_repo(bad_id, model_files("b"))
    fetch(good_id)
    weights = fetch(bad_id) / "model.safetensors"
    blob = weights.resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    blob.write_bytes(bytes(data))

    report = reconcile_cache()

    assert report.imported_repo_ids == [good_id]
    assert Snapshot.objects.get(repository__repo_id=good_id).verified_at is not None
    assert not Snapshot.objects.filter(repository__repo_id=bad_id).exists()
    assert any(
        s.startswith(f"{bad_id}@{bad_sha}: its files failed verification") and "model.safetensors" in s
        for s in report.skipped
    )
    assert not blob.exists()  # the bad bytes are gone: a pull fetches them again


def test_another_tools_filtered_download_is_imported_partial_not_ready(hub, cache_root, new_repo_id) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import snapshot_download

    repo_id = new_repo_id()
    sha = hub.create_repo(repo_id, model_files("a", **{"model-2.safetensors": b"b" * 3000}))
    # `hf download --include` of part of the repo: loadable-looking, but a weight file is not there.
    snapshot_download(
        repo_id,
        cache_dir=cache_root,
        endpoint=hub.url,
        token=False,
        allow_patterns=["config.json", "model.safetensors", "tokenizer*"],
    )

    report = reconcile_cache()

    assert report.imported == [f"{repo_id}@{sha}"]
    snapshot = snapshot_of(repo_id, sha)
    assert snapshot.status == Snapshot.Status.PARTIAL
    assert snapshot.missing_files == ["model-2.safetensors"]
