"""Cache retention: superseded revisions, models unused for too long, a size budget, orphaned partial files.

One function computes the plan; a real run executes exactly that plan (minus anything that became busy in
between, reported as skipped), so a dry run is a faithful preview. Never touched: local models, snapshots that
may be loaded (used within the keep-alive window), repos with a queued or running download, and `.incomplete`
files a live download may still be writing or a queued one will resume.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from huggingface_hub import HFCacheInfo

from models_app.models import DownloadJob, Repository, Snapshot
from models_app.services import shared_store
from models_app.services.cache import in_use_cutoff, newest_first, repos_with_active_jobs
from models_app.services.cache_layout import (
    cache_root_path,
    cached_shas,
    execute_delete,
    marginal_freed,
    repo_cache_info,
    repo_id_from_folder,
    scan,
)

BATCH_REPOS = 20

SUPERSEDED = "superseded revision"
OVER_BUDGET = "over size budget"
ORPHANED = "orphaned partial file"
ORPHANED_SHARED = "shared Xet store entry no cached repo links to"
SHARED_FREED = "shared Xet store entry used only by revisions removed here"


def _human_duration(seconds: float) -> str:
    """30 days, 1 day, 12 hours, 1.5 hours, 90 seconds: for the reason shown next to each plan item."""
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    unit, size = next(((u, s) for u, s in units if seconds >= s), units[-1])
    value = round(seconds / size, 1)
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


@dataclass(frozen=True)
class CleanupItem:
    kind: str  # "snapshot" | "incomplete" | "shared" (an entry of huggingface_hub's shared Xet store)
    repo_id: str
    revision: str  # the ref it was pulled as ("" for a partial file)
    commit_sha: str
    cache_root: str
    path: str
    reason: str
    bytes: int
    snapshot_id: int | None = None


@dataclass(frozen=True)
class CleanupPolicy:
    """What a cleanup removes (None: that rule is off). The keyword arguments of `clean_cache`."""

    max_age: float | None = None  # seconds since last use
    max_size: int | None = None  # bytes per cache root
    keep_revisions: int | None = 1  # the newest N ready revisions of each repo stay

    @property
    def limits_anything(self) -> bool:
        """Whether it removes anything beyond superseded revisions (the scheduled cleanup runs only then)."""
        return bool(self.max_age or self.max_size)

    def as_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def configured_policy() -> CleanupPolicy:
    """The CACHE_CLEANUP_* settings: the scheduled cleanup's policy and every manual cleanup's defaults."""
    return CleanupPolicy(
        max_age=settings.CACHE_CLEANUP_MAX_AGE,
        max_size=settings.CACHE_CLEANUP_MAX_SIZE,
        keep_revisions=settings.CACHE_CLEANUP_KEEP_REVISIONS,
    )


@dataclass
class CleanupPlan:
    max_age: float | None
    max_size: int | None
    keep_revisions: int | None
    dry_run: bool
    items: list[CleanupItem] = field(default_factory=list)
    cache_sizes: dict[str, int] = field(default_factory=dict)  # root name -> bytes before
    deleted: list[CleanupItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # planned, then found busy at execution
    bytes_freed: int = 0
    # Plan-time scans, reused at execution so each repo's delete strategy is the one that was shown.
    _repo_infos: dict[tuple[str, str], HFCacheInfo | None] = field(default_factory=dict, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(item.bytes for item in self.items)

    def as_json(self) -> dict[str, Any]:
        # Not asdict(self): it would deep-copy every plan-time scan.
        return {
            "max_age": self.max_age,
            "max_size": self.max_size,
            "keep_revisions": self.keep_revisions,
            "dry_run": self.dry_run,
            "items": [asdict(item) for item in self.items],
            "cache_sizes": dict(self.cache_sizes),
            "deleted": [asdict(item) for item in self.deleted],
            "skipped": list(self.skipped),
            "bytes_freed": self.bytes_freed,
            "total_bytes": self.total_bytes,
        }


def _last_used(snapshot: Snapshot):  # type: ignore[no-untyped-def]
    return snapshot.last_used_at or snapshot.downloaded_at or snapshot.created_at


def _owned_partials_guard(root_name: str) -> tuple[set[str], float]:
    """Repos a download on this node is writing into (running, heartbeat fresh) or will resume (queued: a
    crashed attempt's partial file is where the next one starts, hub_resume), and the mtime after which a
    partial file counts as being written by someone (another tool, a job without a row yet)."""
    timeout = float(settings.DOWNLOAD_HEARTBEAT_TIMEOUT)
    fresh = timezone.now() - timedelta(seconds=timeout)
    owners = set(
        DownloadJob.objects.filter(node=settings.NODE_NAME, cache_root=root_name)
        .filter(
            Q(state=DownloadJob.State.RUNNING, heartbeat_at__gte=fresh) | Q(state=DownloadJob.State.QUEUED)
        )
        .values_list("repository__repo_id", flat=True)
    )
    return owners, fresh.timestamp()


def _is_orphan(path: Path, owners: set[str], fresh_ts: float) -> bool:
    if repo_id_from_folder(path.parent.parent.name) in owners:
        return False
    try:
        return path.stat().st_mtime < fresh_ts
    except OSError:
        return False  # already gone


class _RootPlanner:
    """Plans one cache root, keeping per-repo order so freed bytes count a shared blob once."""

    def __init__(self, plan: CleanupPlan, root_name: str, info: HFCacheInfo) -> None:
        self.plan, self.root_name, self.info = plan, root_name, info
        self.chosen: dict[str, list[Snapshot]] = defaultdict(list)
        self.freed_by_repo: dict[str, int] = defaultdict(int)

    def repo_info(self, repo_id: str) -> HFCacheInfo | None:
        key = (self.root_name, repo_id)
        if key not in self.plan._repo_infos:
            self.plan._repo_infos[key] = repo_cache_info(Path(self.info.cache_dir or ""), repo_id, self.info)
        return self.plan._repo_infos[key]

    def add(self, snapshot: Snapshot, reason: str) -> int:
        repo_id = snapshot.repository.repo_id
        self.chosen[repo_id].append(snapshot)
        shas = [s.commit_sha for s in self.chosen[repo_id]]
        total = sum(marginal_freed(self.repo_info(repo_id), shas))
        size, self.freed_by_repo[repo_id] = total - self.freed_by_repo[repo_id], total
        path = _revision_path(self.repo_info(repo_id), snapshot.commit_sha)
        self.plan.items.append(
            CleanupItem(
                "snapshot",
                repo_id,
                snapshot.ref,
                snapshot.commit_sha,
                self.root_name,
                path,
                reason,
                size,
                snapshot.id,
            )
        )
        return size

    def add_shared_entries(self, root: Path) -> None:
        """A store entry linked from several repos is freed by none of their strategies alone (each sees the
        other's link), yet goes once all of them are deleted: one item counts it, once."""
        deleted: set[Path] = set()
        for repo_id, chosen in self.chosen.items():
            repo_info = self.repo_info(repo_id)
            if repo_info is None:
                continue
            strategy = repo_info.delete_revisions(*[s.commit_sha for s in chosen])
            deleted |= set(strategy.blobs)
            if strategy.repos:  # the whole folder goes: every blob of it
                deleted |= {f.blob_path for r in repo_info.repos for rev in r.revisions for f in rev.files}
        entries = {e for blob in deleted if (e := shared_store.store_entry(blob, root)) is not None}
        for entry in sorted(entries):
            users = shared_store.entry_users(entry, root)
            if users and users <= deleted and len({blob.parent.parent for blob in users}) > 1:
                size = entry.stat().st_size
                self.plan.items.append(
                    CleanupItem("shared", "", "", "", self.root_name, str(entry), SHARED_FREED, size)
                )


def _revision_path(repo_info: HFCacheInfo | None, sha: str) -> str:
    for repo in repo_info.repos if repo_info else ():
        for rev in repo.revisions:
            if rev.commit_hash == sha:
                return str(rev.snapshot_path)
    return ""


def _plan_root(plan: CleanupPlan, root_name: str, snapshots: list[Snapshot], busy_repos: set[int]) -> None:
    info = scan(cache_root_path(root_name))
    if info is None:
        return
    cache_size = info.size_on_disk + info.incomplete_size_on_disk
    plan.cache_sizes[root_name] = cache_size
    planner = _RootPlanner(plan, root_name, info)
    cutoff = in_use_cutoff()
    now = timezone.now()
    writing = _plan_partials(plan, root_name, info)
    by_repo: dict[str, list[Snapshot]] = defaultdict(list)
    for snapshot in snapshots:  # newest first
        by_repo[snapshot.repository.repo_id].append(snapshot)
    candidates: list[Snapshot] = []  # deletable, not planned yet
    for repo_id, group in sorted(by_repo.items()):
        if repo_id not in writing:
            present = cached_shas(planner.repo_info(repo_id))
            candidates += _plan_repo(
                planner, group, present=present, busy_repos=busy_repos, cutoff=cutoff, now=now
            )
    root = cache_root_path(root_name)
    for entry, size in sorted(shared_store.orphaned_entries(root).items()):
        plan.items.append(CleanupItem("shared", "", "", "", root_name, str(entry), ORPHANED_SHARED, size))
    if plan.max_size is not None:
        remaining = cache_size - sum(i.bytes for i in plan.items if i.cache_root == root_name)
        for snapshot in sorted(candidates, key=lambda s: (_last_used(s), s.id)):  # oldest used first
            if remaining <= plan.max_size:
                break
            remaining -= planner.add(snapshot, OVER_BUDGET)
    planner.add_shared_entries(root)


def _plan_partials(plan: CleanupPlan, root_name: str, info: HFCacheInfo) -> set[str]:
    """Plans the orphaned partial files; returns the repos with a partial file someone may be writing: their
    folder stays whole."""
    owners, fresh_ts = _owned_partials_guard(root_name)
    writing: set[str] = set()
    for partial in sorted(info.incomplete_files, key=lambda f: str(f.file_path)):
        repo_id = repo_id_from_folder(partial.file_path.parent.parent.name)
        if not _is_orphan(partial.file_path, owners, fresh_ts):
            writing.add(repo_id)
            continue
        plan.items.append(
            CleanupItem("incomplete", repo_id, "", "", root_name, str(partial.file_path), ORPHANED,
                        partial.size_on_disk)
        )  # fmt: skip
    return writing


def _plan_repo(
    planner: _RootPlanner,
    group: list[Snapshot],
    *,
    present: set[str],
    busy_repos: set[int],
    cutoff: datetime,
    now: datetime,
) -> list[Snapshot]:
    """Plans a repo's superseded and too old snapshots (`group`, newest first); returns the others that may go
    (the candidates for the size budget). A snapshot in use, or of a repo a job works on, stays."""
    plan = planner.plan
    superseded: set[int] = set()
    ready = [s for s in group if s.status == Snapshot.Status.READY]
    if plan.keep_revisions and len(ready) > plan.keep_revisions:
        boundary = group.index(ready[plan.keep_revisions - 1])
        superseded = {s.id for s in group[boundary + 1 :]}
    candidates = []
    for snapshot in group:
        if snapshot.commit_sha not in present or snapshot.repository_id in busy_repos:
            continue
        if snapshot.last_used_at is not None and snapshot.last_used_at >= cutoff:
            continue
        if snapshot.id in superseded:
            planner.add(snapshot, SUPERSEDED)
        elif plan.max_age is not None and (now - _last_used(snapshot)).total_seconds() > plan.max_age:
            planner.add(snapshot, f"older than {_human_duration(plan.max_age)} unused")
        else:
            candidates.append(snapshot)
    return candidates


def clean_cache(
    *,
    max_age: float | timedelta | None = None,
    max_size: int | None = None,
    keep_revisions: int | None = 1,
    dry_run: bool = True,
    cache: str | None = None,
) -> CleanupPlan:
    """Plan (and unless dry_run, carry out) a cleanup of this node's cache roots (`cache`: one root by name).

    keep_revisions: per repo, the newest N ready snapshots stay; older ones are "superseded" (None: off).
    max_age: seconds (or timedelta) since last use (or download, if never used). max_size: a byte budget
    per cache root, met by removing the least recently used snapshots first."""
    if isinstance(max_age, timedelta):
        max_age = max_age.total_seconds()
    if keep_revisions is not None and keep_revisions < 1:
        raise ValueError("keep_revisions must be at least 1 (or None to keep every revision)")
    plan = CleanupPlan(max_age=max_age, max_size=max_size, keep_revisions=keep_revisions, dry_run=dry_run)
    root_names = [cache] if cache else list(settings.CACHE_ROOTS)
    for name in root_names:
        cache_root_path(name)  # unknown name: a clear error before anything is touched

    snapshots = list(
        newest_first(
            Snapshot.objects.select_related("repository").filter(
                node=settings.NODE_NAME, cache_root__in=root_names, repository__kind=Repository.Kind.HUB
            )
        ).exclude(status__in=[Snapshot.Status.DELETED, Snapshot.Status.DOWNLOADING])
    )
    busy_repos = repos_with_active_jobs()
    for name in root_names:
        _plan_root(plan, name, [s for s in snapshots if s.cache_root == name], busy_repos)
    if not dry_run:
        _execute(plan)
    return plan


def _execute(plan: CleanupPlan) -> None:
    # Partial files first: a repo whose last revision goes is removed as a whole folder, partials included.
    _delete_partials(plan)
    _delete_snapshots(plan)
    # Last: an entry freed with the repos above is gone already.
    _delete_shared(plan)


def _delete_partials(plan: CleanupPlan) -> None:
    """The orphaned partial files, unless one is being written since the plan was made."""
    for root_name in sorted({i.cache_root for i in plan.items if i.kind == "incomplete"}):
        owners, fresh_ts = _owned_partials_guard(root_name)
        for item in plan.items:
            if item.kind != "incomplete" or item.cache_root != root_name:
                continue
            path = Path(item.path)
            if not _is_orphan(path, owners, fresh_ts):
                plan.skipped.append(f"{item.path}: being written since the plan was made")
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            plan.bytes_freed += item.bytes
            plan.deleted.append(item)


def _delete_snapshots(plan: CleanupPlan) -> None:
    """Bounded batches of whole repos: a repo's revisions go in one strategy (shared blobs), and the guards
    are re-read right before each batch, since a chat or a pull may have started since the plan was made."""
    by_repo: dict[tuple[str, str], list[CleanupItem]] = defaultdict(list)
    for item in plan.items:
        if item.kind == "snapshot":
            by_repo[(item.cache_root, item.repo_id)].append(item)
    keys = list(by_repo)
    for start in range(0, len(keys), BATCH_REPOS):
        _delete_batch(plan, {key: by_repo[key] for key in keys[start : start + BATCH_REPOS]})


def _delete_batch(plan: CleanupPlan, by_repo: dict[tuple[str, str], list[CleanupItem]]) -> None:
    ids = [item.snapshot_id for items in by_repo.values() for item in items]
    rows = dict(Snapshot.objects.filter(id__in=ids).values_list("id", "repository_id"))
    busy_repos = repos_with_active_jobs(rows.values())
    fresh = set(
        Snapshot.objects.filter(id__in=ids, last_used_at__gte=in_use_cutoff()).values_list("id", flat=True)
    )
    done: list[CleanupItem] = []
    for key, planned in by_repo.items():
        items = []
        for item in planned:
            if item.snapshot_id in fresh or rows.get(item.snapshot_id) in busy_repos:
                plan.skipped.append(f"{item.repo_id}@{item.commit_sha}: in use since the plan was made")
            else:
                items.append(item)
        plan.bytes_freed += execute_delete(plan._repo_infos.get(key), [i.commit_sha for i in items])
        done.extend(items)
    Snapshot.objects.filter(id__in=[i.snapshot_id for i in done]).update(
        status=Snapshot.Status.DELETED, updated_at=timezone.now()
    )
    plan.deleted.extend(done)


def _delete_shared(plan: CleanupPlan) -> None:
    """An entry freed with the repos is gone already, and counted in bytes_freed by the strategy of the last
    repo linking it (recomputed at execution, it saw that repo as the only user); an orphan is swept now,
    under huggingface_hub's lock, unless a pull linked it again since the plan."""
    for item in plan.items:
        if item.kind != "shared":
            continue
        entry = Path(item.path)
        if item.reason == SHARED_FREED and not entry.exists():
            plan.deleted.append(item)
            continue
        freed = shared_store.remove_orphan(entry, cache_root_path(item.cache_root)) if entry.exists() else 0
        if not freed:
            plan.skipped.append(f"{item.path}: linked from a repo again since the plan was made")
            continue
        plan.bytes_freed += freed
        plan.deleted.append(item)
