"""Redis round trips, counted: what a path costs on its way to the first token is mostly its round trips."""

from __future__ import annotations

import pytest
import redis


def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on (for the test, or the monkeypatch context), the name of each command the sync client sends
    alone, and "pipeline" for each pipeline it executes: one entry per round trip."""
    trips: list[str] = []
    real_command, real_pipeline = redis.Redis.execute_command, redis.client.Pipeline.execute
    monkeypatch.setattr(
        redis.Redis,
        "execute_command",
        lambda self, *a, **k: trips.append(a[0]) or real_command(self, *a, **k),
    )
    monkeypatch.setattr(
        redis.client.Pipeline,
        "execute",
        lambda self, *a, **k: trips.append("pipeline") or real_pipeline(self, *a, **k),
    )
    return trips
