"""hub_digest: blobs hashed while huggingface_hub writes them, against the local Hub, so verification after a
pull need not read them again. What must hold: the recorded digest is the digest of the bytes on disk (across
a cut connection, a resume from another process's partial file, a server that ignores the Range), a wrong
byte is still caught, and a blob changed after it was written is hashed from disk again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.file_download import repo_folder_name

from models_app.services import hub_checks, hub_digest, hub_progress, hub_resume
from models_app.services.cache_layout import FileRecord
from tests.downloads.conftest import new_repo_id, resolve_requests

DATA = os.urandom(3_000_000)


@pytest.fixture(autouse=True, params=["inline", "threaded"])
def hashing_mode(request, monkeypatch):  # type: ignore[no-untyped-def]
    """Small blobs are hashed on the writing thread, big ones on a thread of their own: both, every test."""
    if request.param == "threaded":
        monkeypatch.setattr(hub_digest, "THREADED_FROM", 0)
    return request.param


SHA256 = hashlib.sha256(DATA).hexdigest()
SMALL = b'{"model_type": "llama"}\n' * 10  # under the LFS threshold: checked by git blob sha1
SMALL_BLOB_ID = hashlib.sha1(b"blob %d\0" % len(SMALL) + SMALL).hexdigest()


def published(hub, cache: Path) -> tuple[str, str, Path]:  # type: ignore[no-untyped-def]
    repo_id = new_repo_id("inflight")
    sha = hub.create_repo(repo_id, {"weights.bin": DATA, "small.json": SMALL}, xet=False)
    repo_dir = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo_dir / "blobs").mkdir(parents=True)
    return repo_id, sha, repo_dir


def download(hub, repo_id: str, sha: str, cache: Path, name: str = "weights.bin") -> Path:  # type: ignore[no-untyped-def]
    hub_resume.install()
    return Path(hf_hub_download(repo_id, name, revision=sha, cache_dir=cache, endpoint=hub.url, token=False))


WEIGHTS = FileRecord("weights.bin", len(DATA), "0" * 40, SHA256)


def refuse_reading(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Verification that would read a blob again fails the test: the digest recorded in flight must do."""

    def no_read(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("verification read the blob again")

    monkeypatch.setattr(hub_checks, "file_hash", no_read)


def test_a_downloaded_blob_is_verified_from_the_digest_taken_while_it_was_written(
    hub, tmp_path, monkeypatch
) -> None:
    repo_id, sha, repo_dir = published(hub, tmp_path)
    weights = download(hub, repo_id, sha, tmp_path)
    small = download(hub, repo_id, sha, tmp_path, "small.json")

    assert hub_digest.known_digest(weights.resolve(), git_sha1=False) == SHA256
    assert hub_digest.known_digest(small.resolve(), git_sha1=True) == SMALL_BLOB_ID
    refuse_reading(monkeypatch)
    small_spec = FileRecord("small.json", len(SMALL), SMALL_BLOB_ID)
    assert hub_checks.verify_files(repo_dir, sha, [WEIGHTS, small_spec], just_written=True) == {}


def test_wrong_bytes_from_the_hub_are_caught_by_the_digest_taken_in_flight(
    hub, tmp_path, monkeypatch
) -> None:
    repo_id, sha, repo_dir = published(hub, tmp_path)
    hub.faults.wrong_bytes(pattern="weights.bin")
    weights = download(hub, repo_id, sha, tmp_path)
    blob = weights.resolve()

    refuse_reading(monkeypatch)
    problems = hub_checks.verify_files(repo_dir, sha, [WEIGHTS], just_written=True)

    assert problems == {"weights.bin": "sha256 differs from the Hub's"}
    assert not blob.exists()  # deleted: the next pull fetches it again


def test_a_blob_changed_after_it_was_written_is_hashed_again_from_disk(hub, tmp_path) -> None:
    repo_id, sha, repo_dir = published(hub, tmp_path)
    blob = download(hub, repo_id, sha, tmp_path).resolve()
    with blob.open("r+b") as f:  # one flipped byte, same size
        f.seek(1234)
        f.write(bytes([DATA[1234] ^ 0xFF]))

    assert hub_digest.known_digest(blob, git_sha1=False) is None
    assert hub_checks.verify_files(repo_dir, sha, [WEIGHTS], just_written=True) == {
        "weights.bin": "sha256 differs from the Hub's"
    }


def test_a_cut_connection_resumed_inside_the_transfer_hashes_every_byte_once(
    hub, tmp_path, monkeypatch
) -> None:
    # The worker's chunk size (hub_progress): with huggingface_hub's 10 MiB, the cut comes before any write.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", hub_progress.CHUNK_SIZE)
    repo_id, sha, _ = published(hub, tmp_path)
    hub.faults.drop_after(1_000_000, pattern="weights.bin", times=1)

    blob = download(hub, repo_id, sha, tmp_path).resolve()

    ranges = [r.headers.get("Range", "") for r in resolve_requests(hub, repo_id)]
    assert len(ranges) == 2 and ranges[1].startswith("bytes="), ranges  # cut, then continued
    assert hub_digest.known_digest(blob, git_sha1=False) == SHA256


def test_a_resume_from_another_process_partial_file_hashes_its_kept_bytes_too(hub, tmp_path) -> None:
    repo_id, sha, repo_dir = published(hub, tmp_path)
    (repo_dir / "blobs" / f"{SHA256}.0badc0de.incomplete").write_bytes(DATA[:1_000_000])

    blob = download(hub, repo_id, sha, tmp_path).resolve()

    assert hub.served(repo_id, "weights.bin") == len(DATA) - 1_000_000  # really resumed
    assert hub_digest.known_digest(blob, git_sha1=False) == SHA256


def test_a_wrong_byte_in_a_kept_partial_file_is_caught(hub, tmp_path, monkeypatch) -> None:
    repo_id, sha, repo_dir = published(hub, tmp_path)
    bad_prefix = bytearray(DATA[:1_000_000])
    bad_prefix[777] ^= 0x01
    (repo_dir / "blobs" / f"{SHA256}.0badc0de.incomplete").write_bytes(bad_prefix)
    download(hub, repo_id, sha, tmp_path)

    refuse_reading(monkeypatch)
    assert hub_checks.verify_files(repo_dir, sha, [WEIGHTS], just_written=True) == {
        "weights.bin": "sha256 differs from the Hub's"
    }


def test_a_server_that_ignores_the_range_restarts_the_digest_with_the_file(hub, tmp_path) -> None:
    repo_id, sha, repo_dir = published(hub, tmp_path)
    (repo_dir / "blobs" / f"{SHA256}.0badc0de.incomplete").write_bytes(b"x" * 1_000_000)  # not even a prefix
    hub.faults.ignore_range(pattern="weights.bin")

    blob = download(hub, repo_id, sha, tmp_path).resolve()

    assert hub.served(repo_id, "weights.bin") == len(DATA)  # the whole body, over the kept bytes
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == SHA256
    assert hub_digest.known_digest(blob, git_sha1=False) == SHA256


def test_verification_outside_a_pull_always_reads_the_bytes(hub, tmp_path, monkeypatch) -> None:
    # verify_model / the admin / reconcile look for bit rot, which leaves mtime and size alone.
    repo_id, sha, repo_dir = published(hub, tmp_path)
    download(hub, repo_id, sha, tmp_path)
    read: list[Path] = []
    real = hub_checks.file_hash

    def counting(path: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        read.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(hub_checks, "file_hash", counting)
    assert hub_checks.verify_files(repo_dir, sha, [WEIGHTS]) == {}
    assert [p.name for p in read] == [SHA256]
