"""What this node's cache roots hold, as totals: the Cache page, the Overview's disk pictures and
`GET /api/v1/cache` read them here.

Two ways of counting bytes, each with its use. A snapshot's `size_bytes` counts every file it links in full,
so the sums below count a blob shared by several repos (a Xet shared-store entry) once per repo: that is what
deleting those repos one by one would involve. The shared store's own totals (`shared_store`) count each
entry once: that is what the store takes on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Sum

from models_app.models import Snapshot
from models_app.services.shared_store import summary as store_summary


@dataclass(frozen=True)
class RootTotals:
    name: str
    path: Path
    snapshots: int = 0
    # Sum of the snapshots' sizes: a shared-store entry counts once for every repo that links it.
    size_bytes: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    # {entries, bytes, orphaned_entries, orphaned_bytes}, every entry counted once (shared_store.summary);
    # None unless asked for: it lists the store on disk.
    shared_store: dict[str, int] | None = None


@dataclass(frozen=True)
class CacheTotals:
    roots: list[RootTotals]

    @property
    def size_bytes(self) -> int:
        return sum(root.size_bytes for root in self.roots)

    @property
    def snapshots(self) -> int:
        return sum(root.snapshots for root in self.roots)


def _on_this_node(user: Any):  # type: ignore[no-untyped-def]
    """Snapshots in this node's configured cache roots, not deleted, that `user` may see (None: everyone's).
    A root no longer configured is left out: its snapshots cannot be served (UnknownCacheRoot)."""
    snapshots = Snapshot.objects.filter(node=settings.NODE_NAME, cache_root__in=list(settings.CACHE_ROOTS))
    if user is not None:
        snapshots = snapshots.visible_to(user)
    return snapshots.exclude(status=Snapshot.Status.DELETED)


def cache_totals(*, user: Any, include_shared_store: bool = False) -> CacheTotals:
    """Per cache root of this node (in CACHE_ROOTS order): how many snapshots `user` may see and their bytes,
    by status. `user=None` counts everyone's: the disk is shared, so the Overview's disk picture does. With
    `include_shared_store`, each root's shared Xet store as well, every entry counted once. One GROUP BY."""
    per_root: dict[str, dict[str, Any]] = {}
    rows = _on_this_node(user).values("cache_root", "status").annotate(n=Count("id"), size=Sum("size_bytes"))
    for row in rows:
        entry = per_root.setdefault(row["cache_root"], {"snapshots": 0, "size_bytes": 0, "by_status": {}})
        entry["snapshots"] += row["n"]
        entry["size_bytes"] += row["size"] or 0
        entry["by_status"][row["status"]] = row["n"]
    return CacheTotals(
        roots=[
            RootTotals(
                name=name,
                path=Path(path),
                **per_root.get(name, {}),
                shared_store=store_summary(Path(path)) if include_shared_store else None,
            )
            for name, path in settings.CACHE_ROOTS.items()
        ]
    )


def repo_usage_list(*, user: Any) -> list[dict[str, Any]]:
    """The repos `user` may see in this node's cache roots, biggest first: {repository__repo_id, bytes,
    revisions, last_used}. Their bytes add up to cache_totals(user=user).size_bytes. One GROUP BY."""
    return list(
        _on_this_node(user)
        .values("repository__repo_id")
        .annotate(bytes=Sum("size_bytes"), revisions=Count("id"), last_used=Max("last_used_at"))
        .order_by("-bytes", "repository__repo_id")
    )
