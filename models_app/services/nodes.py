"""The machines of the cluster: which are up, what each has (disk per cache root, memory, loaded models),
which are down, and forgetting one for good.

Up or down is never stored: a machine is up while one of its workers' presence keys lives in Redis (10 s
TTL, workers.py), and down when the database remembers it (a `Node` row, written by its own reconcile) but
no worker of it beats. Snapshots of a down machine are unavailable (not offered for chat, /v1/models or
pulls there) without any row changing: when its workers come back they are available again at once, and
the reconcile each maintenance worker runs as it starts re-checks their files."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from models_app.models import DownloadJob, Node, Snapshot
from models_app.services import catalog, workers

log = logging.getLogger(__name__)

UP, DOWN, UNKNOWN = "up", "down", "unknown"
# What a pull names to let the product pick the machine (a machine cannot be called that).
ANY_NODE = "any"
_OWN_QUEUE_PREFIXES = ("node.", "inference.")


def worker_node(info: workers.WorkerInfo) -> str:
    """The machine a worker runs on: the one its own queue names, else the NODE_NAME it publishes."""
    for queue in info.queues:
        for prefix in _OWN_QUEUE_PREFIXES:
            if queue.startswith(prefix):
                return queue.removeprefix(prefix)
    return info.node or settings.NODE_NAME


def _downloads_for(info: workers.WorkerInfo, node: str) -> bool:
    return workers.node_queue("downloads", node) in info.queues or "downloads" in info.queues


def _inference_for(info: workers.WorkerInfo, node: str) -> bool:
    return workers.node_queue("inference", node) in info.queues or "inference" in info.queues


@dataclass
class NodeStatus:
    name: str
    state: str  # up | down | unknown (Redis not answering)
    last_seen: float | None  # epoch seconds of its last heartbeat (or reconcile), None if never
    this: bool  # the machine serving this page
    workers: list[str] = field(default_factory=list)
    can_download: bool = False
    can_infer: bool = False
    # {cache root name: {free, total}} from its download/maintenance worker; {} when none publishes it.
    disk: dict[str, dict[str, int]] = field(default_factory=dict)
    # {total, available, budget}: the budget is what its memory verdicts (and its inference worker) use.
    memory: dict[str, int] = field(default_factory=dict)
    loaded_models: list[dict[str, Any]] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.state == UP

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "last_seen": self.last_seen,
            "this": self.this,
            "can_download": self.can_download,
            "can_infer": self.can_infer,
            "disk": self.disk,
            "memory": self.memory,
            "loaded_models": self.loaded_models,
            "workers": self.workers,
        }


def _live_by_node() -> dict[str, list[workers.WorkerInfo]]:
    """Raises redis.RedisError."""
    by_node: dict[str, list[workers.WorkerInfo]] = {}
    for info in workers.live_workers():
        by_node.setdefault(worker_node(info), []).append(info)
    return by_node


def _status(name: str, live: list[workers.WorkerInfo], last_seen: float | None) -> NodeStatus:
    status = NodeStatus(
        name=name, state=UP if live else DOWN, last_seen=last_seen, this=name == settings.NODE_NAME
    )
    for info in live:
        status.workers.append(info.hostname)
        status.can_download |= _downloads_for(info, name)
        status.can_infer |= _inference_for(info, name)
        if "disk" in info.extra:
            status.disk.update(info.extra["disk"])
        if info.extra.get("memory"):
            status.memory = dict(info.extra["memory"])
        status.loaded_models.extend(info.extra.get("loaded_models", []))
        status.last_seen = max(status.last_seen or 0.0, info.last_seen)
    return status


def cluster() -> list[NodeStatus]:
    """Every machine: the live ones and those the database remembers, this one first, then by name."""
    remembered = {n.name: n.last_seen.timestamp() for n in Node.objects.all()}
    try:
        live = _live_by_node()
        seen = workers.nodes_last_seen()
    except redis.RedisError:
        return [
            NodeStatus(name=name, state=UNKNOWN, last_seen=last, this=name == settings.NODE_NAME)
            for name, last in sorted(remembered.items())
        ]
    names = sorted(set(remembered) | set(live))
    statuses = [
        _status(name, live.get(name, []), max(seen.get(name, 0.0), remembered.get(name, 0.0)) or None)
        for name in names
    ]
    return sorted(statuses, key=lambda s: (not s.this, s.name))


# The machines the database remembers, kept while the catalog version holds (services/catalog.py): a chat
# message reads them on its way to the first token.
_REMEMBERED: catalog.Memo[frozenset[str]] = catalog.Memo(size=1)


def down_nodes(current: str | None = None) -> set[str]:
    """Machines the database remembers whose workers have all stopped. Empty when Redis does not answer
    (then nothing can be told apart, and chat reports the missing worker itself). The remembered names are
    kept under the catalog version `current` (None: read them)."""
    remembered = _REMEMBERED.get(
        "nodes", current, lambda: frozenset(Node.objects.values_list("name", flat=True)) or None
    )
    if not remembered:
        return set()
    try:
        live = _live_by_node()
    except redis.RedisError:
        return set()
    return set(remembered) - set(live)


def record_seen(name: str | None = None) -> None:
    """The machine's own reconcile remembers it (so that it can later be shown as down)."""
    name, now = name or settings.NODE_NAME, timezone.now()
    # The stamp alone (update_or_create would save first_seen too): it leaves the catalog version alone.
    if not Node.objects.filter(name=name).update(last_seen=now):
        Node.objects.get_or_create(name=name, defaults={"last_seen": now})


# --- Forgetting a machine ---------------------------------------------------------------------------------


class NodeError(Exception):
    pass


@dataclass(frozen=True)
class Removal:
    node: str
    snapshots: int
    jobs_cancelled: int


def removal_preview(name: str) -> dict[str, int]:
    """What remove_node would forget, for the confirmation."""
    return {
        "snapshots": Snapshot.objects.filter(node=name).count(),
        "active_jobs": DownloadJob.objects.active().filter(node=name).count(),
    }


def remove_node(name: str) -> Removal:
    """Forget a machine for good: its snapshots' rows go (conversations, usage and finished jobs keep their
    history without the link), its queued jobs are cancelled, its Node row goes. Files on that machine are
    not touched (they are not reachable from here); if its workers ever start again, their reconcile imports
    whatever is still in its cache. Refused while any of its workers is alive."""
    try:
        live = _live_by_node()
    except redis.RedisError as exc:
        raise NodeError("Redis is not answering: cannot tell whether that machine is still up.") from exc
    if name in live:
        hosts = ", ".join(w.hostname for w in live[name])
        raise NodeError(f"Node {name!r} is up (workers: {hosts}): stop its workers first.")
    if not Node.objects.filter(name=name).exists() and not Snapshot.objects.filter(node=name).exists():
        raise NodeError(f"No node named {name!r} is known.")
    with transaction.atomic():
        cancelled = 0
        for job in DownloadJob.objects.active().filter(node=name).select_for_update():
            cancelled += DownloadJob.objects.filter(id=job.id, state=job.state).update(
                state=DownloadJob.State.CANCELLED,
                error_code="cancelled",
                error_message=f"Node {name} was removed.",
                finished_at=timezone.now(),
            )
        _, deleted = Snapshot.objects.filter(node=name).delete()
        snapshots = deleted.get(Snapshot._meta.label, 0)
        Node.objects.filter(name=name).delete()
    workers.forget_node(name)
    log.warning("node %s removed: %d snapshot rows forgotten, %d jobs cancelled", name, snapshots, cancelled)
    return Removal(node=name, snapshots=snapshots, jobs_cancelled=cancelled)
