"""Fixtures for the download tests: repos published to the local Hub, job polling, dedicated workers.

The session's download worker and HF cache are shared by every test, so each test publishes repos under
fresh ids (the local Hub's commit shas repeat from one session to the next; the cache on disk does not
forget)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from huggingface_hub.file_download import repo_folder_name

from devkit.processes import CeleryWorker, start_worker, wait_for
from models_app.models import DownloadJob
from models_app.services import jobs

FINAL = tuple(DownloadJob.FINAL_STATES)


def new_repo_id(stem: str = "model") -> str:
    return f"test-dl/{stem}-{uuid.uuid4().hex[:10]}"


def repo_dir(repo_id: str, root: Path | None = None) -> Path:
    return Path(root or settings.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def incomplete_files(repo_id: str, blob: str = "") -> list[Path]:
    """Partial downloads in a repo's cache folder (of one blob, given its etag)."""
    return sorted((repo_dir(repo_id) / "blobs").glob(f"{blob}*.incomplete"))


def resolve_requests(hub: Any, repo_id: str, method: str = "GET") -> list[Any]:
    return [r for r in list(hub.requests) if r.method == method and r.path.startswith(f"/{repo_id}/resolve/")]


def wait_job(job: DownloadJob | int, states: tuple[str, ...] = FINAL, timeout: float = 30.0) -> DownloadJob:
    job_id = job if isinstance(job, int) else job.id

    def reached() -> bool:
        return DownloadJob.objects.filter(id=job_id, state__in=states).exists()

    try:
        wait_for(reached, timeout, f"job {job_id} did not reach {states}")
    except TimeoutError:
        row = DownloadJob.objects.filter(id=job_id).values().first()
        raise TimeoutError(f"job {job_id} did not reach {states} in {timeout} s: {row}") from None
    return DownloadJob.objects.select_related("repository", "snapshot").get(id=job_id)


@pytest.fixture
def tiny_files(tiny_model_path: Path) -> dict[str, bytes | Path]:
    from devkit.tinymodel import tiny_model_files

    return dict(tiny_model_files(tiny_model_path))


@pytest.fixture
def publish(hub: Any, tiny_files: dict[str, bytes | Path]) -> Iterator[Callable[..., tuple[str, str]]]:
    """Publish the tiny model (plus `extra` files, or exactly `files`) under a fresh id: (repo_id, sha).
    Its folder in the shared cache is removed after the test: a worker that starts reconciles the whole
    cache, and a cache that grows with every run slows every later test down."""
    published: list[str] = []

    def publish(
        stem: str = "tiny",
        *,
        files: dict[str, bytes | Path] | None = None,
        extra: dict[str, bytes | Path] | None = None,
        **kwargs: Any,
    ) -> tuple[str, str]:
        repo_id = new_repo_id(stem)
        content = dict(tiny_files if files is None else files)
        content.update(extra or {})
        published.append(repo_id)
        return repo_id, hub.create_repo(repo_id, content, **kwargs)

    yield publish
    for repo_id in published:
        shutil.rmtree(repo_dir(repo_id), ignore_errors=True)


@pytest.fixture
def private_queue(monkeypatch: pytest.MonkeyPatch) -> str:
    """Send this test's download tasks to a queue of their own (a dedicated worker's, or none at all for a
    test that runs the task in-process): the session worker never sees them."""
    queue = f"downloads-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(jobs, "QUEUE", queue)
    return queue


@pytest.fixture
def dedicated_worker(
    stack_env: dict[str, str], process_log_dir: Path, private_queue: str
) -> Iterator[Callable]:
    """Start workers on the private queue with extra environment; all are stopped after the test."""
    started: list[CeleryWorker] = []

    def start(**env: str) -> CeleryWorker:
        worker = start_worker(
            name=f"{private_queue}-{len(started)}",
            queues=private_queue,
            env={**stack_env, **env},
            log_dir=process_log_dir,
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def kill_hard(worker: CeleryWorker) -> None:
    """SIGKILL the worker and its pool children: a machine losing power, as far as the job can tell."""
    for pid in [*worker.children(), worker.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.process.wait(10)


# --- Xet mode (HUB_PROTOCOL.md §9) ------------------------------------------------------------------------


def shared_entry(xet_hash: str, root: Path | None = None) -> Path:
    """Where huggingface_hub keeps a Xet file's bytes once for every repo: <cache>/blobs/<2 hex>/<hash>."""
    return Path(root or settings.HF_HUB_CACHE) / "blobs" / xet_hash[:2] / xet_hash


@pytest.fixture(scope="session")
def xet_local_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A local Hub of its own that serves LFS files through a local Xet CAS. The CAS admits one process at a
    time: content is uploaded when a repo is published (new content only), so publish before the (one-child)
    worker that pulls from it starts; a repo made of content already published touches no CAS."""
    from devkit.localhub import LocalHub

    hub = LocalHub(tmp_path_factory.mktemp("xet-hub"), xet=True).start()
    yield hub
    hub.stop()


@pytest.fixture
def xet_hub(xet_local_hub: Any, settings: Any) -> Iterator[Any]:
    settings.HF_ENDPOINT = xet_local_hub.url
    yield xet_local_hub
    xet_local_hub.faults.clear()


@pytest.fixture
def xet_over_http(xet_hub: Any) -> Iterator[Any]:
    """The Xet hub hands out its CAS over HTTP (devkit/xetcas.py), as the real Hub does, for tests that
    throttle or stall the storage and watch from the server's side what hf_xet fetched and when it let go."""
    xet_hub.xet_transport = "http"
    yield xet_hub
    xet_hub.xet_transport = "local"
    xet_hub.release_xet()


@pytest.fixture(scope="session")
def big_file(test_var_dir: Path) -> Path:
    """1 GB of random bytes (kept between runs): a Xet transfer from the local CAS lasts seconds."""
    path = test_var_dir.parent / "xet-big.bin"  # one for every xdist worker
    size = 1 << 30
    if not path.is_file() or path.stat().st_size != size:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        os.replace(tmp, path)
    return path


@pytest.fixture
def xet_publish(
    xet_hub: Any, tiny_files: dict[str, bytes | Path]
) -> Iterator[Callable[..., tuple[str, str]]]:
    """`publish` for the Xet hub; also removes the shared-store entries its files left in the cache."""
    published: list[str] = []

    def publish(
        stem: str = "xet", *, extra: dict[str, bytes | Path] | None = None, **kwargs: Any
    ) -> tuple[str, str]:
        repo_id = new_repo_id(stem)
        published.append(repo_id)
        return repo_id, xet_hub.create_repo(repo_id, {**tiny_files, **(extra or {})}, **kwargs)

    yield publish
    for repo_id in published:
        shutil.rmtree(repo_dir(repo_id), ignore_errors=True)
    for xet_hash in xet_hub.xet_hashes().values():
        for path in shared_entry(xet_hash).parent.glob(f"{xet_hash}*"):
            path.chmod(0o644)
            path.unlink(missing_ok=True)


def xet_worker(dedicated_worker: Callable[..., CeleryWorker], hub: Any, **env: str) -> CeleryWorker:
    """A download worker with one pool child that pulls from `hub` (after its repos are published)."""
    return dedicated_worker(HF_ENDPOINT=hub.url, **env)
