"""Integrity of a snapshot on disk against the Hub's description of it (Snapshot.files).

LFS files are checked by sha256, the others by size and git blob sha1: the same ids the Hub uses as ETags,
so a blob that was truncated, bit-flipped or replaced is caught whatever tool wrote it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.utils import timezone

from models_app.models import Snapshot
from models_app.services.cache import snapshot_path
from models_app.services.cache_layout import (
    CacheError,
    FileRecord,
    cached_file_records,
    file_record,
    read_tree,
)
from models_app.services.errors import DownloadError
from models_app.services.hub_checks import file_hash
from models_app.services.validation import safe_relpath


@dataclass
class VerifyResult:
    snapshot_id: int
    status: str
    files_checked: int = 0
    bytes_hashed: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)  # path -> what differs
    verified_at: datetime | None = None

    @property
    def ok(self) -> bool:
        # A partial snapshot's files are all sound: it lacks files, it holds none that are wrong.
        return self.status in (Snapshot.Status.READY, Snapshot.Status.PARTIAL)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verified_at"] = self.verified_at.isoformat() if self.verified_at else None
        return {**data, "ok": self.ok}


def _expected_files(snapshot: Snapshot, root: Path) -> list[FileRecord]:
    if snapshot.files:
        return [file_record(entry) for entry in snapshot.files]
    # Rows written before their file list (a download that never finished): fall back to the tree listing
    # snapshot_download cached, which also names files that are missing, then to what is there.
    tree = read_tree(root.parent.parent, snapshot.commit_sha)
    if tree:
        return [file_record({"path": path, **meta}) for path, meta in sorted(tree.items())]
    return cached_file_records(root)


def _check(file: Path, record: FileRecord) -> tuple[str | None, int]:
    """(what is wrong or None, bytes hashed)."""
    size = file.stat().st_size
    if record.size is not None and size != record.size:
        return f"size {size} != {record.size}", 0
    if not record.sha256 and not record.blob_id:
        return None, 0  # nothing more to check against
    if record.sha256:
        if file_hash(file, size, git_sha1=False) != record.sha256:
            return "sha256 differs", size
    elif file_hash(file, size, git_sha1=True) != record.blob_id:
        return "git blob sha1 differs", size
    return None, size


def verify_model(snapshot: Snapshot) -> VerifyResult:
    """Hash every file of the snapshot; set its status to ready, invalid (a file differs) or missing (a file
    or the directory is gone), and verified_at. A deleted snapshot is reported, never revived."""
    # Every file it holds may be sound and it still lack what mlx-lm needs (a filtered pull): partial.
    intact = Snapshot.Status.PARTIAL if snapshot.missing_files else Snapshot.Status.READY
    result = VerifyResult(snapshot_id=snapshot.id, status=intact)
    try:
        root = snapshot_path(snapshot)
    except CacheError:
        root = None  # a local model whose root is no longer configured: as good as missing
    if root is None or not root.is_dir():
        result.status = Snapshot.Status.MISSING
        result.missing = [file_record(e).path for e in snapshot.files] or ["."]
    else:
        for record in _expected_files(snapshot, root):
            try:
                file = root / safe_relpath(record.path)
            except DownloadError:
                result.mismatched[record.path] = "unsafe path in the file list"
                continue
            if not file.is_file():  # follows the symlink: a dangling link is a missing blob
                result.missing.append(record.path)
                continue
            problem, hashed = _check(file, record)
            result.files_checked += 1
            result.bytes_hashed += hashed
            if problem:
                result.mismatched[record.path] = problem
        if result.missing:
            result.status = Snapshot.Status.MISSING
        elif result.mismatched:
            result.status = Snapshot.Status.INVALID

    result.verified_at = timezone.now()
    if snapshot.status == Snapshot.Status.DELETED:
        result.status = Snapshot.Status.DELETED
        return result
    # update(), not save(): a generation may be stamping last_used_at on the same row right now.
    Snapshot.objects.filter(id=snapshot.id).exclude(status=Snapshot.Status.DELETED).update(
        status=result.status, verified_at=result.verified_at, updated_at=result.verified_at
    )
    snapshot.status, snapshot.verified_at = result.status, result.verified_at
    if result.ok:
        from models_app.services import model_markers

        model_markers.fill_markers(snapshot)  # a row older than the markers: the files are here, read them
    return result
