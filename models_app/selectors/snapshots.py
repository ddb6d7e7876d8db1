"""Snapshots a user may see: the model list of the Models page, `GET /api/v1/models`, `/v1/models`, the chat
page's model picker and `manage.py models` all read them here, and search the same fields."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.db.models import F, Q, QuerySet
from django.db.models.functions import Coalesce

from models_app.models import Snapshot

# What a model search looks in, on the page, in the API and in the CLI alike: the repo id (org/name) and the
# model type from its config (llama, qwen2...). Each word of the query must appear, case-insensitively, in
# one of them: "qwen coder" finds Qwen2.5-Coder-7B, and "llama" finds every llama-architecture model.
SEARCH_FIELDS = ("repository__repo_id", "model_type")


def search_filter(query: str) -> Q:
    """The condition a model search adds (see SEARCH_FIELDS); an empty query matches everything."""
    condition = Q()
    for word in query.split():
        any_field = Q()
        for field in SEARCH_FIELDS:
            any_field |= Q(**{f"{field}__icontains": word})
        condition &= any_field
    return condition


def snapshot_list(
    *,
    user: Any,
    query: str | None = None,
    statuses: Iterable[str] | None = None,
    include_deleted: bool = False,
    repo_id: str | None = None,
    repository_id: int | None = None,
    node: str | None = None,
    updates_only: bool = False,
) -> QuerySet[Snapshot]:
    """Snapshots `user` may see (Snapshot.objects.visible_to; None: every one), with their repository.

    Deleted snapshots are left out unless `include_deleted` or named in `statuses`. `query` searches
    SEARCH_FIELDS; `repo_id` is exact; `updates_only` keeps repos whose Hub head moved. Unordered beyond the
    model's default: each caller sorts as it shows them."""
    snapshots = Snapshot.objects.select_related("repository")
    if user is not None:
        snapshots = snapshots.visible_to(user)
    if statuses:
        snapshots = snapshots.filter(status__in=list(statuses))
    elif not include_deleted:
        snapshots = snapshots.exclude(status=Snapshot.Status.DELETED)
    if query:
        snapshots = snapshots.filter(search_filter(query))
    if repo_id is not None:
        snapshots = snapshots.filter(repository__repo_id=repo_id)
    if repository_id is not None:
        snapshots = snapshots.filter(repository_id=repository_id)
    if node is not None:
        snapshots = snapshots.filter(node=node)
    if updates_only:
        snapshots = snapshots.filter(repository__update_available=True)
    return snapshots


def snapshot_get(*, user: Any, snapshot_id: int) -> Snapshot | None:
    """One snapshot `user` may see, deleted ones included (their page still explains them), or None: someone
    else's private model is "not found", never "forbidden", so an id reveals nothing."""
    return snapshot_list(user=user, include_deleted=True).filter(pk=snapshot_id).first()


@dataclass(frozen=True)
class ModelInfo:
    repo_id: str
    kind: str
    snapshot_id: int
    commit_sha: str
    ref: str
    node: str
    cache_root: str
    path: str
    size_bytes: int
    status: str
    model_type: str
    downloaded_at: datetime | None
    last_used_at: datetime | None
    verified_at: datetime | None
    private: bool
    gated: bool
    update_available: bool
    remote_sha: str

    def as_json(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def model_list(*, user: Any, node: str | None = None, query: str | None = None) -> list[ModelInfo]:
    """Every snapshot the user may see but deleted ones (all nodes unless `node`, matching `query` as
    snapshot_list searches), by repo id and newest first within a repo. One query."""
    snapshots = (
        snapshot_list(user=user, node=node, query=query)
        .annotate(_when=Coalesce("downloaded_at", "created_at"))
        .order_by("repository__repo_id", F("_when").desc(), "-id")
    )
    return [
        ModelInfo(
            repo_id=s.repository.repo_id,
            kind=s.repository.kind,
            snapshot_id=s.id,
            commit_sha=s.commit_sha,
            ref=s.ref,
            node=s.node,
            cache_root=s.cache_root,
            path=s.path,
            size_bytes=s.size_bytes,
            status=s.status,
            model_type=s.model_type,
            downloaded_at=s.downloaded_at or s.created_at,
            last_used_at=s.last_used_at,
            verified_at=s.verified_at,
            private=s.repository.private,
            gated=s.repository.gated,
            # The snapshot at the Hub's head is the update: it has none itself.
            update_available=s.repository.update_available and s.commit_sha != s.repository.remote_sha,
            remote_sha=s.repository.remote_sha,
        )
        for s in snapshots
    ]
