"""Worker presence is read from an index of hostnames, not by SCANning Redis: a SCAN walks the whole keyspace
(channel-layer messages, cancel flags, Celery's keys) page by page, and the web server reads presence several
times per chat message."""

from __future__ import annotations

import time

import redis

from models_app.services import redis as app_redis
from models_app.services import workers
from tests.redis_trips import round_trips


def test_live_workers_are_found_without_scanning_the_keyspace(redis_prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    workers.beat_once(hostname="a@one", queues=["inference"], started_at=now)
    workers.beat_once(hostname="b@two", queues=["downloads"], started_at=now)
    client = app_redis.client()
    client.mset({f"{redis_prefix}:noise:{i}": "x" for i in range(2000)})

    def no_scan(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("live_workers scanned the keyspace")

    with monkeypatch.context() as patched:
        patched.setattr(redis.Redis, "scan_iter", no_scan)
        patched.setattr(redis.Redis, "scan", no_scan)
        assert [w.hostname for w in workers.live_workers()] == ["a@one", "b@two"]
        assert [w.hostname for w in workers.workers_for_queue("inference")] == ["a@one"]

        client.delete(app_redis.key("workers", "b@two"))  # its presence expired
        assert [w.hostname for w in workers.live_workers()] == ["a@one"]


def test_an_index_entry_long_past_its_presence_is_forgotten(redis_prefix: str) -> None:
    workers.beat_once(hostname="old@gone", queues=["inference"], started_at=time.time())
    client = app_redis.client()
    client.delete(app_redis.key("workers", "old@gone"))
    client.zadd(app_redis.key("workers-index"), {"old@gone": time.time() - workers.INDEX_FORGET_AFTER - 1})
    assert workers.live_workers() == []
    assert client.zscore(app_redis.key("workers-index"), "old@gone") is None


def test_live_workers_are_read_in_one_round_trip(redis_prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    for name in ("a@one", "b@two", "c@three"):
        workers.beat_once(hostname=name, queues=["inference"], started_at=now)
    app_redis.client().delete(app_redis.key("workers", "b@two"))  # its presence expired
    trips = round_trips(monkeypatch)
    assert [w.hostname for w in workers.live_workers()] == ["a@one", "c@three"]
    assert trips == ["EVAL"]


def test_presence_comes_with_the_catalog_version_in_a_reading_block(redis_prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A chat message and a completion read the catalog's version, then presence: one round trip for both."""
    from models_app.services import catalog

    workers.beat_once(hostname="a@one", queues=["inference"], started_at=time.time())
    expected = catalog.version()
    trips = round_trips(monkeypatch)
    with workers.one_reading():
        assert catalog.version(read=workers.get_with_presence) == expected
        assert [w.hostname for w in workers.live_workers()] == ["a@one"]
        assert catalog.version(read=workers.get_with_presence) == expected  # presence is read once a block
    assert trips == ["pipeline", "GET"]
    trips.clear()
    assert catalog.version(read=workers.get_with_presence) == expected  # outside a block: the version alone
    assert trips == ["GET"]
