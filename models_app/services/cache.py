"""What models this node holds, where they are, and removing them.

The HF cache is the store and the database the index: lookups read rows, paths are recomputed from the cache
layout (cache_layout.py), and deletion goes through huggingface_hub's own `delete_revisions` so blobs shared
between revisions are kept while any revision still links them.

Related services: verify.py (integrity), reconcile.py (cache -> index), cleanup.py (retention policy),
updates.py (remote changes), local_models.py (directories registered by staff). Listing models is a read:
`models_app.selectors.snapshots` (`model_list`, `snapshot_list`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import F, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from models_app.models import DownloadJob, Repository, Snapshot
from models_app.selectors.snapshots import snapshot_list
from models_app.services import local_models
from models_app.services.cache_layout import (
    CacheError,
    UnknownCacheRoot,
    cache_root_path,
    execute_delete,
    hub_snapshot_path,
    marginal_freed,
    repo_cache_info,
    scan,
)

__all__ = [
    "AmbiguousRevision",
    "CacheError",
    "DeleteItem",
    "DeletePlan",
    "ModelInUse",
    "ModelNotFound",
    "NotAllowed",
    "UnknownCacheRoot",
    "cache_root_path",
    "delete_model",
    "get_model_path",
    "has_model",
    "snapshot_path",
]


class ModelNotFound(CacheError):
    code = "model_not_found"


class AmbiguousRevision(CacheError):
    code = "ambiguous_revision"


class ModelInUse(CacheError):
    code = "in_use"


class NotAllowed(CacheError):
    code = "forbidden"


# --- "In use" -------------------------------------------------------------------------------------------------


def in_use_cutoff() -> datetime:
    """A snapshot used after this moment may still be loaded: the inference worker keeps a model warm for
    INFERENCE_KEEP_ALIVE after its last generation, and a generation stamps last_used_at when it starts.
    Never less than a minute, so a keep-alive of 0 still protects a generation in progress."""
    return timezone.now() - timedelta(seconds=max(float(settings.INFERENCE_KEEP_ALIVE), 60.0))


def is_in_use(snapshot: Snapshot) -> bool:
    return snapshot.last_used_at is not None and snapshot.last_used_at >= in_use_cutoff()


def repos_with_active_jobs(repository_ids: Iterable[int] | None = None) -> set[int]:
    """Repositories a queued or running download may be writing into (any node: cache roots can be shared
    network storage, and waiting one cleanup cycle costs nothing)."""
    jobs = DownloadJob.objects.active()
    if repository_ids is not None:
        jobs = jobs.filter(repository_id__in=list(repository_ids))
    return set(jobs.values_list("repository_id", flat=True))


# --- Finding snapshots ----------------------------------------------------------------------------------------


def newest_first(queryset: QuerySet[Snapshot]) -> QuerySet[Snapshot]:
    return queryset.annotate(_when=Coalesce("downloaded_at", "created_at")).order_by(F("_when").desc(), "-id")


def match_revision(snapshots: Sequence[Snapshot], revision: str) -> list[Snapshot]:
    """Snapshots (newest first) that `revision` names: a full sha, a ref they were pulled as, or a sha prefix
    of at least 7 characters. A ref wins over a prefix: "cafe123" may be a branch name."""
    revision = revision.strip()
    exact = [s for s in snapshots if s.commit_sha == revision]
    if exact:
        return exact
    by_ref = [s for s in snapshots if s.ref and s.ref == revision]
    if by_ref:
        # A ref moves: the newest snapshot pulled as `main` is what `main` means here.
        return [s for s in snapshots if s.commit_sha == by_ref[0].commit_sha]
    if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision.lower()):
        prefixed = [s for s in snapshots if s.commit_sha.startswith(revision.lower())]
        if len({s.commit_sha for s in prefixed}) > 1:
            shas = ", ".join(sorted({s.short_sha for s in prefixed}))
            raise AmbiguousRevision(
                f"Revision {revision!r} matches several snapshots ({shas}).", action="Give more of the sha."
            )
        return prefixed
    return []


def find_ready_snapshot(repo_id: str, revision: str | None = None, *, user: Any = None) -> Snapshot:
    """The READY snapshot on this node that `repo_id`@`revision` names (newest when revision is None)."""
    candidates = list(newest_first(snapshot_list(user=user, repo_id=repo_id, node=settings.NODE_NAME)))
    matching = candidates if revision is None else match_revision(candidates, revision)
    ready = [s for s in matching if s.status == Snapshot.Status.READY]
    if ready:
        return ready[0]
    label = repo_id if revision is None else f"{repo_id}@{revision}"
    if matching:
        raise ModelNotFound(
            f"{label} is on this node but not ready (status: {matching[0].status}).",
            action=f"Run `manage.py verify {repo_id}` or pull it again.",
        )
    raise ModelNotFound(
        f"{label} is not downloaded on this node ({settings.NODE_NAME}).",
        action=f"Pull it: manage.py pull {label}",
    )


def snapshot_path(snapshot: Snapshot) -> Path:
    """Where a snapshot's files are, computed from the cache layout (hub) or re-checked against
    LOCAL_MODEL_ROOTS (local): never a stored or user-typed path taken on trust."""
    if snapshot.repository.kind == Repository.Kind.LOCAL:
        return local_models.checked_local_path(snapshot.path)
    return hub_snapshot_path(
        cache_root=snapshot.cache_root, repo_id=snapshot.repository.repo_id, commit_sha=snapshot.commit_sha
    )


def has_model(repo_id: str, revision: str | None = None, *, user: Any = None) -> bool:
    try:
        get_model_path(repo_id, revision, user=user)
    except CacheError:
        return False
    return True


def get_model_path(repo_id: str, revision: str | None = None, *, user: Any = None) -> Path:
    """The directory to hand to mlx_lm.load. Raises ModelNotFound (or AmbiguousRevision) otherwise."""
    snapshot = find_ready_snapshot(repo_id, revision, user=user)
    try:
        path = snapshot_path(snapshot)
    except CacheError as exc:
        raise ModelNotFound(
            f"{repo_id}@{snapshot.short_sha} cannot be served: {exc}", action=exc.action
        ) from exc
    if not path.is_dir():
        raise ModelNotFound(
            f"{repo_id}@{snapshot.short_sha} is indexed as ready but its directory is gone.",
            action="Run `manage.py verify` or wait for the next reconcile, then pull it again.",
        )
    return path


# --- Deleting -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeleteItem:
    snapshot_id: int
    commit_sha: str
    ref: str
    cache_root: str
    path: str
    bytes: int


@dataclass
class DeletePlan:
    repo_id: str
    items: list[DeleteItem] = field(default_factory=list)
    dry_run: bool = True
    # Local models are unregistered only: their directory belongs to whoever put it there.
    files_kept: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes for item in self.items)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_freed": self.bytes_freed}


def delete_model(
    repo_id: str, revision: str | None = None, *, user: Any = None, dry_run: bool = False
) -> DeletePlan:
    """Delete one revision (or every revision, when None) of a model on this node, and mark the rows deleted.

    Refuses (ModelInUse) while a download job of the repo is queued or running, or while a snapshot may be
    loaded (used within the keep-alive window). Staff, or the user who pulled the repo, may delete."""
    repo = _repository_to_delete(repo_id, user)
    targets = _snapshots_to_delete(repo, revision)
    plan = DeletePlan(repo_id=repo_id, dry_run=dry_run, files_kept=repo.kind == Repository.Kind.LOCAL)
    by_root: dict[str, list[Snapshot]] = defaultdict(list)
    for snapshot in targets:
        by_root[snapshot.cache_root].append(snapshot)
    for root_name, group in by_root.items():
        repo_info = None
        if not plan.files_kept:
            root = cache_root_path(root_name)
            repo_info = repo_cache_info(root, repo_id, scan(root))
        freed = marginal_freed(repo_info, [s.commit_sha for s in group])
        for snapshot, size in zip(group, freed, strict=True):
            plan.items.append(
                DeleteItem(snapshot.id, snapshot.commit_sha, snapshot.ref, root_name, snapshot.path, size)
            )
        if not dry_run:
            execute_delete(repo_info, [s.commit_sha for s in group])
    if not dry_run:
        Snapshot.objects.filter(id__in=[item.snapshot_id for item in plan.items]).update(
            status=Snapshot.Status.DELETED, updated_at=timezone.now()
        )
    return plan


def _repository_to_delete(repo_id: str, user: Any) -> Repository:
    """The repo, if `user` (None: the CLI) may see and delete it. Raises ModelNotFound, NotAllowed."""
    repository = Repository.objects.filter(repo_id=repo_id)
    if user is not None:
        repository = repository.visible_to(user)
    repo = repository.first()
    if repo is None:
        raise ModelNotFound(f"{repo_id} is not known here.")
    if user is not None and not user.is_staff and repo.owner_id != user.id:
        raise NotAllowed(f"Only staff or the user who pulled {repo_id} may delete it.")
    return repo


def _snapshots_to_delete(repo: Repository, revision: str | None) -> list[Snapshot]:
    """The repo's snapshots on this node that `revision` names (None: all), none of them in use. Raises
    ModelNotFound, ModelInUse."""
    repo_id = repo.repo_id
    snapshots = list(
        newest_first(
            Snapshot.objects.select_related("repository").filter(repository=repo, node=settings.NODE_NAME)
        ).exclude(status=Snapshot.Status.DELETED)
    )
    targets = snapshots if revision is None else match_revision(snapshots, revision)
    if not targets:
        label = repo_id if revision is None else f"{repo_id}@{revision}"
        raise ModelNotFound(f"{label} has no snapshot on this node ({settings.NODE_NAME}).")
    if repos_with_active_jobs([repo.id]):
        raise ModelInUse(
            f"A download of {repo_id} is queued or running.", action="Wait for it to finish or cancel it."
        )
    busy = [s for s in targets if is_in_use(s)]
    if busy:
        raise ModelInUse(
            f"{repo_id}@{busy[0].short_sha} was used in the last minutes and may still be loaded.",
            action="Try again once it has been idle for the keep-alive period (INFERENCE_KEEP_ALIVE).",
        )
    return targets
