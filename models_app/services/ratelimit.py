"""How many generations one API key may have in flight at once (OpenAI-compatible API: 429 beyond that).

The inference worker runs one generation at a time per host, so a client that opens many streams only queues
them behind each other and everyone else; a bound per key keeps one runaway agent from starving the rest.
A sorted set of request ids scored by start time: an entry whose release was never reached (a crashed web
process) ages out after IN_FLIGHT_MAX_AGE instead of holding a slot forever."""

from __future__ import annotations

import contextlib
import time

import redis
from django.conf import settings

from models_app.services import redis as app_redis

IN_FLIGHT_MAX_AGE = 3600.0


def _key(api_key_id: int) -> str:
    return app_redis.key("inflight", "apikey", api_key_id)


def acquire(api_key_id: int, request_id: str) -> bool:
    """Take a slot for this request; False when the key already has its maximum in flight."""
    limit = settings.API_MAX_IN_FLIGHT_PER_KEY
    if limit <= 0:
        return True
    key, now = _key(api_key_id), time.time()
    client = app_redis.client()
    try:
        with client.pipeline() as pipe:  # MULTI/EXEC: the count and the add see the same set
            pipe.zremrangebyscore(key, 0, now - IN_FLIGHT_MAX_AGE)
            pipe.zadd(key, {request_id: now})
            pipe.zcard(key)
            pipe.expire(key, int(IN_FLIGHT_MAX_AGE))
            _, _, count, _ = pipe.execute()
    except redis.RedisError:
        return True  # no Redis, no generation either: the request fails on that, with the right status
    if count > limit:
        client.zrem(key, request_id)
        return False
    return True


def release(api_key_id: int, request_id: str) -> None:
    with contextlib.suppress(redis.RedisError):  # the entry ages out anyway
        app_redis.client().zrem(_key(api_key_id), request_id)
