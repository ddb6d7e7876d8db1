"""Pulls through a Hub mirror: olah (a pip-installable open-source mirror) serving a local git repo offline.
Its model info has no per-file metadata and it answers 401 for names it does not know (issue 12)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.processes import ManagedProcess, wait_for
from devkit.redis_server import free_port
from models_app.models import Snapshot
from models_app.services import hub as hub_service
from tests.downloads.conftest import new_repo_id, repo_dir, wait_job

pytestmark = [pytest.mark.django_db(transaction=True)]


class Olah:
    def __init__(self, root: Path, repos: dict[str, dict[str, bytes | Path]], log_dir: Path) -> None:
        """Each repo becomes a git repo under root/mirrors/models/<org>/<name>, which olah serves offline."""
        for repo_id, files in repos.items():
            folder = root / "mirrors" / "models" / repo_id
            folder.mkdir(parents=True)
            for name, content in files.items():
                (folder / name).write_bytes(
                    content if isinstance(content, bytes) else Path(content).read_bytes()
                )
            git = ["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t"]
            subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
            subprocess.run([*git, "add", "."], check=True)
            subprocess.run([*git, "commit", "-q", "-m", "import"], check=True)
        self.port = free_port()
        config = root / "olah.toml"
        config.write_text(
            f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nmirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\nrepos-path = "{root / "repos"}"\n'
            f'mirrors-path = ["{root / "mirrors"}"]\n\n[accessibility]\noffline = true\n'
        )
        argv = [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(root / "logs")]
        self.process = ManagedProcess(argv, {}, log_dir / f"olah-{self.port}.log")
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, repo_id: str) -> Olah:
        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"olah exited:\n{self.process.log()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/api/models/{repo_id}/revision/main", timeout=2).read()
                return True
            except OSError:
                return False

        wait_for(ready, 60, f"olah not ready:\n{self.process.log()[-3000:]}", interval=0.2)
        return self


@pytest.fixture
def olah(
    tmp_path: Path, tiny_files: dict[str, bytes | Path], process_log_dir: Path, settings: Any
) -> Iterator[Any]:
    repo_id = new_repo_id("mirrored")
    mirror = Olah(tmp_path / "olah", {repo_id: tiny_files}, process_log_dir)
    try:
        mirror.wait_ready(repo_id)
        settings.HF_ENDPOINT = mirror.url
        mirror.repo_id = repo_id  # type: ignore[attr-defined]
        yield mirror
    finally:
        mirror.process.stop()
        shutil.rmtree(repo_dir(repo_id), ignore_errors=True)


def test_a_pull_through_olah_succeeds_and_errors_say_what_the_mirror_allows(
    olah, dedicated_worker, tiny_files, alice
) -> None:
    dedicated_worker(HF_ENDPOINT=olah.url)
    repo_id = olah.repo_id

    job = wait_job(hub_service.download_model(repo_id, user=alice), timeout=90)

    # olah's model info has size=None for every file: the tree listing supplies sizes and blob ids.
    assert (job.state, job.error_code, job.error_message) == ("succeeded", "", "")
    assert job.snapshot.status == Snapshot.Status.READY
    sizes = {f["path"]: f["size"] for f in job.snapshot.files}
    assert sizes == {
        name: Path(p).stat().st_size if not isinstance(p, bytes) else len(p) for name, p in tiny_files.items()
    }
    weights = repo_dir(repo_id) / "snapshots" / job.commit_sha / "model.safetensors"
    assert (
        hashlib.sha256(weights.read_bytes()).digest()
        == hashlib.sha256(Path(tiny_files["model.safetensors"]).read_bytes()).digest()
    )

    # A name olah does not know answers 401 there: "not found or private", and nothing is left behind.
    unknown = new_repo_id("not-mirrored")
    failed = wait_job(hub_service.download_model(unknown, user=alice), timeout=60)
    assert failed.state == "failed" and failed.error_code == "auth_required"
    assert "was not found on" in failed.error_message and "or it is private" in failed.error_message
    assert "check the id" in failed.error_message
    assert not repo_dir(unknown).exists()
    assert not [d for d in repo_dir(repo_id).rglob("*") if d.is_dir() and not any(d.iterdir())]
