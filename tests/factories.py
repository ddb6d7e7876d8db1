"""Rows for tests, made one way everywhere: a snapshot (with its repository) and a download job.

Plain functions (no factory_boy): each takes the few facts a test states and gives the rest realistic defaults,
and any model field can be passed through."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from models_app.models import DownloadJob, Repository, Snapshot


def random_sha() -> str:
    """A 40-hex commit sha no other test uses."""
    return (uuid.uuid4().hex + uuid.uuid4().hex)[:40]


def make_snapshot(
    repo_id: str | None = None,
    *,
    path: Path | str = "",
    owner: Any = None,
    private: bool = False,
    gated: bool = False,
    status: str = Snapshot.Status.READY,
    size: int = 10**6,
    **fields: Any,
) -> Snapshot:
    """A snapshot on this node, its repository created if new (`owner`, `private`, `gated` apply then).

    `path` is a model directory for tests that load it (the tiny model); without one the row stands for files
    in the cache that no test reads. It lists two files of `size` bytes in all, downloaded now; any Snapshot
    field (commit_sha, ref, files, size_bytes, model_type, ...) can be given."""
    repository, _ = Repository.objects.get_or_create(
        repo_id=repo_id or f"test/model-{uuid.uuid4().hex[:8]}",
        defaults={"owner": owner, "private": private, "gated": gated},
    )
    fields.setdefault("commit_sha", random_sha())
    fields.setdefault("ref", "main")
    fields.setdefault("size_bytes", size)
    fields.setdefault("downloaded_at", timezone.now())
    fields.setdefault(
        "files",
        [
            {"path": "config.json", "size": 100, "blob_id": random_sha()},
            {"path": "model.safetensors", "size": size - 100, "sha256": "ab" * 32},
        ],
    )
    return Snapshot.objects.create(
        repository=repository, node=settings.NODE_NAME, path=str(path), status=status, **fields
    )


def make_job(
    snapshot: Snapshot, *, user: Any, state: str = DownloadJob.State.SUCCEEDED, **fields: Any
) -> DownloadJob:
    """A download job of the snapshot's repository, requested by `user`; a succeeded one points at it."""
    return DownloadJob.objects.create(
        repository=snapshot.repository,
        revision=fields.pop("revision", f"rev-{uuid.uuid4().hex[:8]}"),
        node=settings.NODE_NAME,
        requested_by=user,
        state=state,
        snapshot=snapshot if state == DownloadJob.State.SUCCEEDED else None,
        bytes_total=fields.pop("bytes_total", snapshot.size_bytes),
        finished_at=None if state in DownloadJob.ACTIVE_STATES else timezone.now(),
        **fields,
    )
