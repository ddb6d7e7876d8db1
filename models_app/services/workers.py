"""Worker presence: each Celery worker writes a small Redis key every few seconds with a short TTL, so the
health page and the chat page can tell in milliseconds which queues have a live worker (a Celery `inspect`
broadcast takes a second or more and says nothing about a worker that died without a goodbye)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from models_app.services import node_facts
from models_app.services import redis as app_redis

log = logging.getLogger(__name__)

BEAT_INTERVAL = 3.0
TTL = 10

# Extra facts a worker publishes with each beat (the inference worker adds its MLX device and loaded models).
_extra_providers: list[Callable[[], dict[str, Any]]] = []
_stop = threading.Event()
_hostname: str | None = None


@dataclass(frozen=True)
class WorkerInfo:
    hostname: str
    host: str
    pid: int
    queues: list[str]
    last_seen: float
    started_at: float
    extra: dict[str, Any] = field(default_factory=dict)
    # Its machine's NODE_NAME ("" from a worker of an older version).
    node: str = ""

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.last_seen)


def _presence_key(hostname: str) -> str:
    return app_redis.key("workers", hostname)


def _index_key() -> str:
    """Every worker that beat lately (hostname -> when): finding the presence keys without a SCAN, which walks
    the whole keyspace (channel-layer messages, cancel flags, Celery's keys) page by page, several times per
    chat message."""
    return app_redis.key("workers-index")


# An index entry this much older than its worker's last beat is dropped (its presence key expired long ago).
# Far above TTL: the web server compares a worker's clock with its own here, and machines' clocks differ.
INDEX_FORGET_AFTER = 600


def add_extra_provider(provider: Callable[[], dict[str, Any]]) -> None:
    _extra_providers.append(provider)


def _extra() -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for provider in _extra_providers:
        try:
            extra.update(provider())
        except Exception:  # a broken provider must not stop the heartbeat
            log.exception("worker presence provider failed")
    return extra


def _last_seen_key() -> str:
    return app_redis.key("nodes", "last_seen")


def beat_once(
    *, hostname: str, queues: list[str], started_at: float, node: str | None = None, facts: bool = False
) -> None:
    """One heartbeat. `facts`: add the machine's memory and (for a cache-writing worker) disk per cache root,
    as real workers do; tests that stand in for a worker of another machine pass `node`."""
    node = node or settings.NODE_NAME
    now = time.time()
    extra = node_facts.facts(queues) if facts else {}
    payload = {
        "hostname": hostname,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "queues": queues,
        "last_seen": now,
        "started_at": started_at,
        "node": node,
        "extra": {**extra, **_extra()},
    }
    pipe = app_redis.client().pipeline(transaction=False)
    pipe.set(_presence_key(hostname), json.dumps(payload), ex=TTL)
    pipe.zadd(_index_key(), {hostname: now})
    # Outlives the presence key: when a machine's workers stop, the pages can still say since when.
    pipe.hset(_last_seen_key(), node, now)
    pipe.execute()


def forget_node(node: str) -> None:
    """Drop a removed machine's "last seen" (its presence keys are gone already)."""
    app_redis.client().hdel(_last_seen_key(), node)


def nodes_last_seen() -> dict[str, float]:
    """When each machine's workers last beat, as far as Redis remembers. Raises redis.RedisError."""
    raw = app_redis.client().hgetall(_last_seen_key())
    return {name: float(value) for name, value in raw.items()}


def start_presence(*, hostname: str, queues: list[str]) -> None:
    """Called from the worker_ready signal; beats from a daemon thread until the worker shuts down."""
    global _hostname
    _hostname = hostname
    started = time.time()
    _stop.clear()

    def beat() -> None:
        while not _stop.is_set():
            try:
                beat_once(hostname=hostname, queues=queues, started_at=started, facts=True)
            except redis.RedisError as exc:  # Redis restarting: keep beating, it comes back by itself
                log.warning("worker presence beat failed: %s", exc)
            _stop.wait(BEAT_INTERVAL)

    threading.Thread(target=beat, name="worker-presence", daemon=True).start()


def stop_presence() -> None:
    _stop.set()
    if _hostname:
        with contextlib.suppress(redis.RedisError):
            pipe = app_redis.client().pipeline(transaction=False)
            pipe.delete(_presence_key(_hostname))
            pipe.zrem(_index_key(), _hostname)
            pipe.execute()


# Inside `one_reading()`: the first live_workers() of the block, reused by the others.
_reading: contextvars.ContextVar[list[list[WorkerInfo]] | None] = contextvars.ContextVar(
    "presence", default=None
)


@contextlib.contextmanager
def one_reading() -> Iterator[None]:
    """Presence read once for the block: a chat message checked it four times on its way to the worker (the
    machines that are down, routing, the worker check, the send), each a Redis round trip and a JSON parse of
    every worker's heartbeat, for an answer that cannot change within the request's milliseconds."""
    token = _reading.set([])
    try:
        yield
    finally:
        _reading.reset(token)


def live_workers() -> list[WorkerInfo]:
    """Workers seen within the TTL. Raises redis.RedisError when Redis is down."""
    reading = _reading.get()
    if reading:
        return list(reading[0])
    found = _read_live_workers()
    if reading is not None:
        reading.append(found)
    return list(found)


# KEYS: the index. ARGV: forget index entries older than this, the presence keys' prefix. Every presence that
# has not expired, in the index's order. Whether a worker is alive is its presence key's TTL (kept by Redis's
# clock), not the index's times. One round trip: a chat message and an API completion read presence on their
# way to the worker, where the index and the presence keys took two. (The presence keys are read by name
# inside the script, which a single Redis allows, as the product uses one; a Redis Cluster would refuse it.)
_LIVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local found = {}
for _, hostname in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local raw = redis.call('GET', ARGV[2] .. hostname)
    if raw then
        found[#found + 1] = raw
    end
end
return found
"""


def _read_live_workers() -> list[WorkerInfo]:
    return _infos(app_redis.client().eval(*_live_args()))


def _live_args() -> tuple[Any, ...]:
    return (_LIVE, 1, _index_key(), time.time() - INDEX_FORGET_AFTER, _presence_key(""))


def _infos(raws: list[str]) -> list[WorkerInfo]:
    return sorted((WorkerInfo(**json.loads(raw)) for raw in raws), key=lambda w: w.hostname)


def get_with_presence(key: str) -> Any:
    """GET `key`; inside a one_reading block that has not read presence yet, the block's presence read too, in
    the same round trip. A chat message and a completion read the catalog's version first and presence soon
    after: one round trip fewer on the way to the first token (~0.1 ms of CPU and as much of waiting here).
    Raises redis.RedisError."""
    reading = _reading.get()
    if reading is None or reading:
        return app_redis.client().get(key)
    pipe = app_redis.client().pipeline(transaction=False)
    pipe.get(key)
    pipe.eval(*_live_args())
    value, raws = pipe.execute()
    reading.append(_infos(raws))
    return value


def workers_for_queue(queue: str) -> list[WorkerInfo]:
    return [w for w in live_workers() if queue in w.queues]


# --- Several machines -------------------------------------------------------------------------------------
# Each machine's workers also read queues of their own: `node.<name>` (the downloads+maintenance worker:
# downloads and the maintenance that works on that machine's cache) and `inference.<name>` (its inference
# worker). A task that must run where the files are goes there; the shared queues stay for everything else,
# and for workers started by hand without a node queue.

SHARED_QUEUE = {"downloads": "downloads", "maintenance": "maintenance", "inference": "inference"}
_NODE_PREFIX = {"downloads": "node.", "maintenance": "node.", "inference": "inference."}


def node_queue(kind: str, node: str) -> str:
    """The queue only `node`'s workers read, for "downloads", "maintenance" or "inference" tasks."""
    return _NODE_PREFIX[kind] + node


def queue_for(own: str, shared: str) -> str:
    """A node's own queue when a live worker reads it, else the shared one (one machine whose workers were
    started without node queues; or Redis not answering, which the send itself will then report)."""
    try:
        live = live_workers()
    except redis.RedisError:
        return shared
    return own if any(own in worker.queues for worker in live) else shared


def node_queues(kind: str) -> list[str]:
    """The own queues of every machine with a live worker of that kind."""
    prefix = _NODE_PREFIX[kind]
    return sorted({q for worker in live_workers() for q in worker.queues if q.startswith(prefix)})


def node_names(kind: str) -> list[str]:
    """The machines with a live worker of that kind reading its own queue; [] when Redis is not answering."""
    try:
        queues = node_queues(kind)
    except redis.RedisError:
        return []
    return [q.removeprefix(_NODE_PREFIX[kind]) for q in queues]
