"""Requests in flight: how many generations one user (chat page and API together) and one API key may have
queued or running at once. Beyond that the API answers 429 and the chat socket chat.error.

The inference worker runs one generation at a time per host and takes requests in arrival order, so a user
who may only have N in flight can never put more than N requests ahead of anyone else's: that bound is the
fairness between users (README, "Fair use").

Each request holds a lease: its id in one Redis sorted set per scope (`inflight:user:<id>`,
`inflight:apikey:<id>`), scored by the time the lease expires. The running request renews it (`renew`, cheap
when not due) and gives it back when it ends (`release`, or `release_soon` from async code, which a cancelled
task cannot interrupt). A lease nobody renews (a web process that died, a response the server abandoned)
expires after LEASE_SECONDS, whatever the client did, and the next acquire drops it and logs it: a slot can
be held by nobody for LEASE_SECONDS at most, never for an hour."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import redis
from django.conf import settings

from models_app.services import redis as app_redis

log = logging.getLogger(__name__)

# A lease not renewed within this long is gone. The API renews at every keep-alive (5 s), the chat socket at
# every watchdog tick (INFERENCE_PICKUP_TIMEOUT / 4): both well within it.
LEASE_SECONDS = 30.0
RENEW_EVERY = 5.0

# Drops expired leases of every scope, refuses when any scope is full, else adds the lease to all of them.
# KEYS: the scopes' sets; ARGV: now, expiry, request id, the expired counter's key, then one limit per key
# (0: no limit). Returns {index of the full scope or 0, leases expired now}.
_ACQUIRE = """
local expired, seen = 0, {}
for i, key in ipairs(KEYS) do
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[1])) do
        if not seen[id] then  -- one lease sits in several scopes: count it once
            seen[id] = true
            expired = expired + 1
        end
    end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
end
if expired > 0 then
    redis.call('INCRBY', ARGV[4], expired)
end
for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[4 + i])
    if limit > 0 and redis.call('ZCARD', key) >= limit then
        return {i, expired}
    end
end
local ttl = math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1
for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, ARGV[2], ARGV[3])
    redis.call('EXPIRE', key, ttl)
end
return {0, expired}
"""

# Pushes the lease's expiry on, in the scopes where it still is (XX: a released or expired lease stays gone).
_RENEW = """
local ttl = math.ceil(tonumber(ARGV[1]) - tonumber(ARGV[3])) + 1
for i, key in ipairs(KEYS) do
    if redis.call('ZADD', key, 'XX', 'CH', ARGV[1], ARGV[2]) == 1 then
        redis.call('EXPIRE', key, ttl)
    end
end
return 1
"""


def scope_key(kind: str, scope_id: int) -> str:
    return app_redis.key("inflight", kind, scope_id)


def expired_key() -> str:
    """A counter of leases that expired instead of being released (each one a request whose end was lost;
    one whose scopes are reaped at different times counts once per reap)."""
    return app_redis.key("inflight", "expired")


@dataclass(frozen=True)
class Scope:
    kind: str  # "user" | "apikey"
    id: int
    limit: int  # 0: no limit


class LimitReached(Exception):
    def __init__(self, scope: Scope) -> None:
        super().__init__(f"{scope.kind} {scope.id} already has {scope.limit} requests in flight")
        self.scope = scope


@dataclass
class Lease:
    request_id: str
    keys: tuple[str, ...]
    renewed_at: float = field(default_factory=time.monotonic)

    def renewal_due(self) -> bool:
        return bool(self.keys) and time.monotonic() - self.renewed_at >= RENEW_EVERY


def scopes_for(
    user_id: int, api_key_id: int | None = None, *, limits: tuple[int, int] | None = None
) -> list[Scope]:
    """The limits a request of this user (through this key) counts against: `limits`, the user's
    (UserLimits.of), else read from the database."""
    from models_app.models import UserLimits

    user_limit, _ = limits or UserLimits.for_user(user_id)
    scopes = [Scope("user", user_id, user_limit)]
    if api_key_id is not None:
        scopes.append(Scope("apikey", api_key_id, settings.API_MAX_IN_FLIGHT_PER_KEY))
    return scopes


def acquire(request_id: str, scopes: list[Scope]) -> Lease:
    """Take a slot in every scope for this request, or none: raises LimitReached naming the full scope."""
    keys = tuple(scope_key(s.kind, s.id) for s in scopes)
    now = time.time()
    try:
        full, expired = app_redis.client().eval(
            _ACQUIRE,
            len(keys),
            *keys,
            now,
            now + LEASE_SECONDS,
            request_id,
            expired_key(),
            *(s.limit for s in scopes),
        )
    except redis.RedisError:
        # No Redis, no generation either: the request fails on that, with the right status.
        return Lease(request_id, ())
    if expired:
        log.warning("%d in-flight lease(s) expired without being released", expired)
    if full:
        raise LimitReached(scopes[int(full) - 1])
    return Lease(request_id, keys)


def renew(lease: Lease) -> None:
    """Keep the lease while its request runs. Blocking (Redis): from async code, through sync_to_async."""
    if not lease.keys:
        return
    lease.renewed_at = time.monotonic()
    now = time.time()
    with contextlib.suppress(redis.RedisError):  # missed renewals only shorten the lease
        app_redis.client().eval(
            _RENEW, len(lease.keys), *lease.keys, now + LEASE_SECONDS, lease.request_id, now
        )


def release(lease: Lease) -> None:
    if not lease.keys:
        return
    # On a Redis error the lease expires anyway.
    with contextlib.suppress(redis.RedisError), app_redis.client().pipeline(transaction=False) as pipe:
        for key in lease.keys:
            pipe.zrem(key, lease.request_id)
        pipe.execute()


def release_soon(lease: Lease) -> None:
    """Release from async code without awaiting: the release is handed to a thread at once, so a task that
    is being cancelled (a client that hung up) cannot stop it half-way, as an awaited call could."""
    if lease.keys:
        asyncio.get_running_loop().run_in_executor(None, release, lease)


async def release_async(lease: Lease) -> None:
    """Release from async code and wait for it; a cancellation of the caller stops the waiting, never the
    release (it runs in a thread, shielded)."""
    if lease.keys:
        await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, release, lease))


def count(kind: str, scope_id: int) -> int:
    """Live leases in a scope."""
    return int(app_redis.client().zcount(scope_key(kind, scope_id), time.time(), "+inf"))
