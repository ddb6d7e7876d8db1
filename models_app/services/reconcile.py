"""Bring the index in line with the cache: import what other tools downloaded, flag what vanished, remove
partial files nobody is writing any more.

Runs at worker start and periodically (tasks/maintenance.py). Re-running it is a no-op.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from huggingface_hub.utils._cache_manager import CachedRepoInfo, CachedRevisionInfo

from models_app.models import DownloadJob, Repository, Snapshot
from models_app.services import hub_checks, model_markers, nodes
from models_app.services.cache import snapshot_path
from models_app.services.cache_layout import (
    CacheError,
    cached_file_records,
    context_length,
    file_record,
    hub_snapshot_path,
    read_config,
    read_tree,
    scan,
)
from models_app.services.cleanup import clean_cache
from models_app.services.hub_checks import verify_files
from models_app.services.hub_guard import MetadataError, read_metadata
from models_app.services.local_models import mlx_problem

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    imported: list[str] = field(default_factory=list)  # "repo@sha"
    marked_missing: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # missing before, files back now
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # cached repos not imported, with the reason
    roots: dict[str, str] = field(default_factory=dict)  # root name -> "scanned" | "absent"
    warnings: list[str] = field(default_factory=list)  # scan_cache_dir's CorruptedCacheException messages
    partials_removed: list[str] = field(default_factory=list)  # orphaned *.incomplete files deleted
    markers_filled: int = 0  # rows of this node given their chat-template markers (rows older than the field)

    @property
    def imported_repo_ids(self) -> list[str]:
        return sorted({label.rsplit("@", 1)[0] for label in self.imported})

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _files_present(snapshot: Snapshot) -> bool:
    try:
        root = snapshot_path(snapshot)
    except CacheError:
        return False  # its cache root or local root is no longer configured
    if not root.is_dir():
        return False
    records = [file_record(entry) for entry in snapshot.files]
    # is_file() follows the symlink, so a snapshot entry whose blob was deleted counts as missing.
    return all((root / r.path).is_file() for r in records if r.path)


def _preferred_ref(refs: frozenset[str]) -> str:
    if "main" in refs:
        return "main"
    return sorted(refs)[0] if refs else ""


def _visibility_unknown(repository: Repository) -> bool:
    """A row that no pull succeeded for and no update check read: left by a failed pull before failed pulls
    made their rows private, so "public" there was never read from the Hub."""
    return (
        not repository.private
        and repository.remote_checked_at is None
        and not DownloadJob.objects.filter(repository=repository, state=DownloadJob.State.SUCCEEDED).exists()
    )


def _import(root_name: str, repo: CachedRepoInfo, rev: CachedRevisionInfo, report: ReconcileReport) -> None:
    label = f"{repo.repo_id}@{rev.commit_hash}"
    config_file = Path(rev.snapshot_path) / "config.json"
    try:
        if config_file.is_file():
            read_metadata(config_file, "config.json")
    except MetadataError as exc:  # a config nested 100,000 deep crashed every run with RecursionError
        report.skipped.append(f"{label}: not imported, {exc.reason}")
        return
    except (OSError, ValueError):
        pass  # not JSON: mlx_problem says so below
    problem = mlx_problem(Path(rev.snapshot_path))
    if problem:
        report.skipped.append(f"{label}: not an MLX model mlx-lm can load ({problem})")
        return
    config = read_config(Path(rev.snapshot_path))
    records = cached_file_records(Path(rev.snapshot_path))
    # Ready means verified: every file hashed against the name its blob carries (an LFS sha256 or a git sha1,
    # or the tree listing's). Bad blobs are deleted, as verify does, and the revision is not imported.
    if problems := verify_files(Path(rev.snapshot_path).parent.parent, rev.commit_hash, records):
        listed = "; ".join(f"{path}: {why}" for path, why in sorted(problems.items())[:3])
        report.skipped.append(f"{label}: its files failed verification and were deleted ({listed})")
        return
    # snapshot_download's listing of the whole commit, when it left one: a snapshot that holds only part of
    # it (another tool's filtered download) is imported as partial, not offered for chat.
    listed = read_tree(Path(rev.snapshot_path).parent.parent, rev.commit_hash)
    held = [r.path for r in records]
    missing = hub_checks.mlx_missing(held, listed or held, Path(rev.snapshot_path))
    # Asked again just before writing: a pull that started during the scan owns what it is writing.
    if (
        DownloadJob.objects.active()
        .filter(node=settings.NODE_NAME, repository__repo_id=repo.repo_id)
        .exists()
    ):
        report.skipped.append(f"{label}: a download is running")
        return
    fields = {
        "ref": _preferred_ref(rev.refs),
        "path": str(
            hub_snapshot_path(cache_root=root_name, repo_id=repo.repo_id, commit_sha=rev.commit_hash)
        ),
        "size_bytes": rev.size_on_disk,
        "files": [r.as_json() for r in records],
        "status": Snapshot.Status.PARTIAL if missing else Snapshot.Status.READY,
        "missing_files": missing,
        "model_type": str(config.get("model_type", "")),
        "context_length": context_length(config),
        "markers": model_markers.read_markers(rev.snapshot_path),
        "downloaded_at": datetime.fromtimestamp(rev.last_modified, tz=UTC),
        "verified_at": timezone.now(),
    }
    key = {"commit_sha": rev.commit_hash, "node": settings.NODE_NAME, "cache_root": root_name}
    try:
        with transaction.atomic():
            # Another tool's download says nothing about who may see it: until the update check reads the
            # repo's visibility on the Hub, an imported repo is private (visible to staff only).
            repository, created = Repository.objects.get_or_create(
                repo_id=repo.repo_id, defaults={"kind": Repository.Kind.HUB, "private": True}
            )
            if repository.kind != Repository.Kind.HUB:
                report.skipped.append(f"{label}: the name is taken by a local model")
                return
            if not created and _visibility_unknown(repository):
                Repository.objects.filter(id=repository.id).update(private=True, updated_at=timezone.now())
            # Deleted here once, downloaded again by another tool since: the old row comes back.
            revived = Snapshot.objects.filter(
                repository=repository, status=Snapshot.Status.DELETED, **key
            ).update(**fields, updated_at=timezone.now())
            if not revived:
                Snapshot.objects.create(repository=repository, **key, **fields)
    except IntegrityError:
        return  # a download created the row meanwhile: it owns it
    report.imported.append(label)


def _pull_ended_badly(repo_id: str, commit_sha: str, root_name: str) -> str:
    """ "cancelled" or "failed" when the last pull of this commit into this root did not succeed: what it left
    is no model (its job removes its files; a worker killed mid-cleanup may leave some)."""
    state = (
        DownloadJob.objects.filter(
            node=settings.NODE_NAME,
            repository__repo_id=repo_id,
            commit_sha=commit_sha,
            cache_root=root_name,
        )
        .order_by("-created_at", "-id")
        .values_list("state", flat=True)
        .first()
    )
    return state if state in (DownloadJob.State.CANCELLED, DownloadJob.State.FAILED) else ""


def reconcile_cache() -> ReconcileReport:
    report = ReconcileReport()
    node = settings.NODE_NAME
    # Remembered from now on: if its workers stop, the pages say this machine is down.
    nodes.record_seen(node)
    rows = list(Snapshot.objects.select_related("repository").filter(node=node))
    known = {
        (s.repository.repo_id, s.commit_sha, s.cache_root)
        for s in rows
        if s.status != Snapshot.Status.DELETED
    }
    # A repo being downloaded has half-written snapshots: the job will create its own row.
    downloading = set(
        DownloadJob.objects.active().filter(node=node).values_list("repository__repo_id", flat=True)
    )

    for root_name, root in settings.CACHE_ROOTS.items():
        _import_root(root_name, Path(root), known=known, downloading=downloading, report=report)

    # Partial files no live download owns (a crashed worker's, an interrupted `hf download`'s): the cleanup's
    # own rule, with every retention policy off.
    orphans = clean_cache(keep_revisions=None, dry_run=False)
    report.partials_removed = [item.path for item in orphans.deleted]

    now = timezone.now()
    for snapshot in rows:
        _recheck_files(snapshot, report, now=now)
    # Rows written before the markers were stored: this node has their files, the web server may not.
    report.markers_filled = model_markers.backfill_markers()
    return report


def _import_root(
    root_name: str,
    root: Path,
    *,
    known: set[tuple[str, str, str]],
    downloading: set[str],
    report: ReconcileReport,
) -> None:
    """Import the revisions of one cache root that have no row (`known`: those that do)."""
    info = scan(root)
    if info is None:
        report.roots[root_name] = "absent"
        return
    report.roots[root_name] = "scanned"
    report.warnings.extend(str(w) for w in info.warnings)
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
            if (repo.repo_id, rev.commit_hash, root_name) in known:
                continue
            if repo.repo_id in downloading:
                report.skipped.append(f"{repo.repo_id}@{rev.commit_hash}: a download is running")
                continue
            if ended := _pull_ended_badly(repo.repo_id, rev.commit_hash, root_name):
                report.skipped.append(f"{repo.repo_id}@{rev.commit_hash}: its last pull here was {ended}")
                continue
            try:
                _import(root_name, repo, rev, report)
            except Exception as exc:  # one bad repo is reported; the rest of the cache is still reconciled
                log.exception("reconcile: %s@%s could not be imported", repo.repo_id, rev.commit_hash)
                report.skipped.append(
                    f"{repo.repo_id}@{rev.commit_hash}: could not be imported ({type(exc).__name__})"
                )


def _recheck_files(snapshot: Snapshot, report: ReconcileReport, *, now: datetime) -> None:
    """A row whose files went is marked missing; a missing one whose files came back is restored."""
    if snapshot.status in (Snapshot.Status.READY, Snapshot.Status.PARTIAL, Snapshot.Status.INVALID):
        if _files_present(snapshot):
            report.unchanged += 1
            return
        new_status, bucket = Snapshot.Status.MISSING, report.marked_missing
    elif snapshot.status == Snapshot.Status.MISSING:
        if not _files_present(snapshot):
            report.unchanged += 1
            return
        intact = Snapshot.Status.PARTIAL if snapshot.missing_files else Snapshot.Status.READY
        new_status, bucket = intact, report.restored
    else:
        return  # downloading (its job decides) or deleted (history)
    # Conditional on the status we read: a download finishing meanwhile must win.
    if Snapshot.objects.filter(id=snapshot.id, status=snapshot.status).update(
        status=new_status, updated_at=now
    ):
        bucket.append(f"{snapshot.repository.repo_id}@{snapshot.commit_sha}")
