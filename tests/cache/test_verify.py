"""verify_model: every file present, LFS blobs by sha256, the others by size and git blob sha1."""

from __future__ import annotations

from pathlib import Path

import pytest

from models_app.models import Snapshot
from models_app.services.reconcile import reconcile_cache
from models_app.services.verify import verify_model
from tests.cache.conftest import model_files, snapshot_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def snapshot(hub, fetch, new_repo_id) -> Snapshot:
    repo_id = new_repo_id()
    sha = hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    reconcile_cache()
    return snapshot_of(repo_id, sha)


def _flip_one_byte(path: Path) -> None:
    """Same size, different content: only a hash can tell."""
    data = bytearray(path.resolve().read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.resolve().write_bytes(bytes(data))


def test_an_intact_snapshot_is_ready_and_stamped(snapshot: Snapshot) -> None:
    result = verify_model(snapshot)

    assert result.ok, result
    assert result.files_checked == 4
    assert result.bytes_hashed == sum(len(v) for v in model_files("a").values())
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.READY
    assert snapshot.verified_at == result.verified_at


def test_it_detects_a_corrupted_lfs_blob(snapshot: Snapshot) -> None:
    _flip_one_byte(Path(snapshot.path) / "model.safetensors")

    result = verify_model(snapshot)

    assert result.status == Snapshot.Status.INVALID
    assert result.mismatched == {"model.safetensors": "sha256 differs"}
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.INVALID
    assert snapshot.verified_at is not None


def test_it_detects_a_corrupted_regular_file_by_its_git_sha1(snapshot: Snapshot) -> None:
    _flip_one_byte(Path(snapshot.path) / "config.json")

    result = verify_model(snapshot)

    assert result.mismatched == {"config.json": "git blob sha1 differs"}
    assert result.status == Snapshot.Status.INVALID


def test_it_detects_a_truncated_file_by_its_size(snapshot: Snapshot) -> None:
    blob = (Path(snapshot.path) / "model.safetensors").resolve()
    blob.write_bytes(blob.read_bytes()[:100])

    result = verify_model(snapshot)

    assert result.mismatched == {"model.safetensors": "size 100 != 5000"}


def test_it_detects_a_missing_file(snapshot: Snapshot) -> None:
    (Path(snapshot.path) / "tokenizer.json").unlink()

    result = verify_model(snapshot)

    assert result.status == Snapshot.Status.MISSING
    assert result.missing == ["tokenizer.json"]
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.MISSING


def test_a_missing_blob_behind_a_symlink_is_a_missing_file(snapshot: Snapshot) -> None:
    (Path(snapshot.path) / "model.safetensors").resolve().unlink()

    result = verify_model(snapshot)

    assert result.missing == ["model.safetensors"]


def test_a_snapshot_verified_again_after_repair_is_ready_again(snapshot: Snapshot, fetch) -> None:
    (Path(snapshot.path) / "tokenizer.json").unlink()
    assert verify_model(snapshot).status == Snapshot.Status.MISSING
    fetch(snapshot.repository.repo_id, snapshot.commit_sha)

    assert verify_model(snapshot).status == Snapshot.Status.READY
