"""hub_resume in-process, with huggingface_hub's own download against the local Hub: which partial files a new
transfer continues from, and which it leaves alone. (A real crash: tests/reliability/test_worker_crash.py.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.file_download import repo_folder_name

from models_app.services import hub_resume
from tests.downloads.conftest import new_repo_id, resolve_requests

DATA = os.urandom(3_000_000)
SHA256 = hashlib.sha256(DATA).hexdigest()


def published(hub, cache: Path) -> tuple[str, Path]:  # type: ignore[no-untyped-def]
    repo_id = new_repo_id("resume")
    hub.create_repo(repo_id, {"weights.bin": DATA})
    blobs = cache / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    blobs.mkdir(parents=True)
    return repo_id, blobs


def download(hub, repo_id: str, cache: Path) -> Path:  # type: ignore[no-untyped-def]
    hub_resume.install()
    return Path(hf_hub_download(repo_id, "weights.bin", cache_dir=cache, endpoint=hub.url, token=False))


def weights_ranges(hub, repo_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        r.headers.get("Range", "") for r in resolve_requests(hub, repo_id) if r.path.endswith("/weights.bin")
    ]


def test_a_partial_file_of_the_same_blob_is_continued_from_its_last_byte(hub, tmp_path) -> None:
    repo_id, blobs = published(hub, tmp_path)
    (blobs / f"{SHA256}.0badc0de.incomplete").write_bytes(DATA[:1_000_000])  # a killed process's

    path = download(hub, repo_id, tmp_path)

    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256
    assert weights_ranges(hub, repo_id) == ["bytes=1000000-"]
    assert hub.served(repo_id, "weights.bin") == len(DATA) - 1_000_000
    assert list(blobs.glob("*.incomplete")) == []


def test_partial_files_of_another_blob_or_longer_than_the_blob_are_left_alone(hub, tmp_path) -> None:
    repo_id, blobs = published(hub, tmp_path)
    other = blobs / f"{'a' * 64}.0badc0de.incomplete"
    other.write_bytes(DATA[:1_000_000])
    too_long = blobs / f"{SHA256}.0badc0de.incomplete"
    too_long.write_bytes(DATA + b"x")  # not a prefix of this blob: a Range from there would be refused (416)

    path = download(hub, repo_id, tmp_path)

    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256
    assert weights_ranges(hub, repo_id) == [""]  # from byte 0
    assert hub.served(repo_id, "weights.bin") == len(DATA)
    assert other.read_bytes() == DATA[:1_000_000] and too_long.stat().st_size == len(DATA) + 1
