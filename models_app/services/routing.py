"""Which machine answers: a chat (page or OpenAI API) names a model; the machines that hold a ready snapshot of
it are candidates, and one of them gets the request.

- Only a machine whose inference worker is alive can answer (its presence key says so in a millisecond): its
  own queue `inference.<node>` when a live worker reads it. The shared queue `inference` is used only for the
  web server's own machine, and only when its worker reads the shared queue alone (started by hand, one
  machine): every machine's worker reads the shared queue, so a request sent there for a machine that is down
  would be taken by another one, which does not have the files.
- Among the live ones: the machine that has the snapshot loaded already (no load), else the least busy (fewest
  requests waiting in its queue, the one it is writing counted), then the web server's own machine.
- None alive: `NodeDown`, at once, naming the machine(s), instead of a request nobody can take and a pickup
  timeout later. (On one machine, with no worker reading a machine's own queue, the request keeps going to the
  shared queue, whose check says "no inference worker is running".)

One Redis read of the presence keys per decision (plus one ZCARD per candidate queue); no query beyond the
caller's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis
from django.conf import settings

from models_app.models import Snapshot
from models_app.selectors.snapshots import snapshot_list
from models_app.services import inference, workers
from models_app.services import redis as app_redis

NODE_QUEUE_PREFIX = "inference."


class NodeDown(inference.InferenceUnavailable):
    """Every machine that holds the model is down: say which, now."""

    code = "node_down"


@dataclass(frozen=True)
class Route:
    snapshot: Snapshot
    queue: str


@dataclass(frozen=True)
class Cluster:
    """The live inference workers, as their presence keys describe them (read once per decision)."""

    live: tuple[workers.WorkerInfo, ...]

    @classmethod
    def now(cls) -> Cluster:
        try:
            return cls(tuple(workers.live_workers()))
        except redis.RedisError as exc:
            raise inference.InferenceUnavailable(
                f"Redis is not answering ({exc}); no generation can start."
            ) from exc

    def queue_of(self, node: str) -> str | None:
        """The inference queue that reaches `node`'s worker, or None when it has no live one."""
        own = workers.node_queue("inference", node)
        if any(own in w.queues for w in self.live):
            return own
        shared_only = any(
            inference.QUEUE in w.queues and not any(q.startswith(NODE_QUEUE_PREFIX) for q in w.queues)
            for w in self.live
        )
        return inference.QUEUE if node == settings.NODE_NAME and shared_only else None

    def live_nodes(self) -> set[str]:
        """Machines a request can reach now: every node whose inference worker reads its own queue, and the
        web server's own machine when a worker reaches it through the shared queue."""
        nodes = {q.removeprefix(NODE_QUEUE_PREFIX) for w in self.live for q in w.queues if _is_node_queue(q)}
        if self.queue_of(settings.NODE_NAME) is not None:
            nodes.add(settings.NODE_NAME)
        return nodes

    def has_node_queues(self) -> bool:
        return any(_is_node_queue(q) for w in self.live for q in w.queues)

    def has_loaded(self, snapshot_id: int, queue: str) -> bool:
        return any(
            queue in w.queues
            and any(m.get("snapshot_id") == snapshot_id for m in w.extra.get("loaded_models", []))
            for w in self.live
        )

    def load(self, queue: str) -> int:
        """Requests waiting in the queue, plus the one its worker is writing."""
        waiting = 0
        with contextlib.suppress(redis.RedisError):
            waiting = int(app_redis.client().zcard(inference.queued_key(queue)))
        busy = any(queue in w.queues and w.extra.get("busy_since") for w in self.live)
        return waiting + (1 if busy else 0)


def _is_node_queue(queue: str) -> bool:
    return queue.startswith(NODE_QUEUE_PREFIX) and len(queue) > len(NODE_QUEUE_PREFIX)


def node_down(label: str, nodes: Iterable[str]) -> NodeDown:
    names = sorted(set(nodes))
    if len(names) == 1:
        where = f"machine {names[0]}, which is down"
    else:
        where = f"machines {', '.join(names[:-1])} and {names[-1]}, which are all down"
    return NodeDown(
        f"{label} is on {where}: no inference worker there has reported in the last {workers.TTL} s. "
        "Start its workers again, or pull the model on a machine that is up."
    )


def choose(candidates: Sequence[Snapshot], *, label: str, cluster: Cluster | None = None) -> Route:
    """The snapshot (and queue) that should answer, among ready snapshots of one model, newest first.

    The newest commit that a live machine holds wins (an older commit on a live machine beats a newer one on
    a machine that is down); among that commit's copies: loaded, then least busy, then this machine."""
    if not candidates:
        raise ValueError("no candidates")
    cluster = cluster or Cluster.now()
    reachable = [(s, q) for s in candidates if (q := cluster.queue_of(s.node)) is not None]
    if not reachable:
        here = [s for s in candidates if s.node == settings.NODE_NAME]
        if here and not cluster.has_node_queues():
            # One machine (no worker reads a machine's own queue): the shared queue, whose check then says
            # "no inference worker is running" as it always did.
            return Route(here[0], inference.QUEUE)
        raise node_down(label, (s.node for s in candidates))
    commit = reachable[0][0].commit_sha
    copies = [(s, q) for s, q in reachable if s.commit_sha == commit]
    if len(copies) == 1:
        snapshot, queue = copies[0]
        return Route(snapshot, queue)
    snapshot, queue = min(
        copies,
        key=lambda sq: (
            not cluster.has_loaded(sq[0].id, sq[1]),
            cluster.load(sq[1]),
            sq[0].node != settings.NODE_NAME,
            sq[0].id,
        ),
    )
    return Route(snapshot, queue)


def copies_of(snapshot: Snapshot, user: object) -> list[Snapshot]:
    """The ready snapshots of the same commit on every machine that `user` may use, this one first."""
    from models_app.services.cache import newest_first

    queryset = snapshot_list(
        user=user, statuses=[Snapshot.Status.READY], repository_id=snapshot.repository_id
    ).filter(commit_sha=snapshot.commit_sha)
    rows = list(newest_first(queryset))
    return sorted(rows, key=lambda s: s.id != snapshot.id)


def route_snapshot(snapshot: Snapshot, user: object) -> Route:
    """Where a chat with this snapshot goes: it, or a copy of the same commit on another machine."""
    cluster = Cluster.now()
    label = f"{snapshot.repository.repo_id}@{snapshot.short_sha}"
    if cluster.live_nodes() == {snapshot.node}:
        # The one machine up holds it (one machine, most often): no copy elsewhere could answer, so no query.
        return choose([snapshot], label=label, cluster=cluster)
    candidates = copies_of(snapshot, user) or [snapshot]
    return choose(candidates, label=label, cluster=cluster)
