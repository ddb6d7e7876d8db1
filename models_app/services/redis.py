"""One Redis client per process for the app's own keys (cancel flags, worker presence), with short
timeouts so a dead Redis is reported in seconds instead of hanging a page."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


def client() -> redis.Redis:
    return _client_for(settings.REDIS_URL)


@functools.cache
def _client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=2,
        health_check_interval=10,
        decode_responses=True,
    )


def key(*parts: object) -> str:
    """A key under this installation's prefix: key('cancel', 'abc') -> 'mlxcr:cancel:abc'."""
    return ":".join([settings.REDIS_PREFIX, *(str(p) for p in parts)])
