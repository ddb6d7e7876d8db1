"""Fixtures for the page tests: rows in bulk (repos, snapshots, jobs, usage), so a test can check that a page
costs the same number of queries with 10 rows as with 300."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from models_app.models import ApiKey, DownloadJob, Repository, Snapshot, Usage
from tests.factories import make_job, make_snapshot


def sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.fixture
def populate(db) -> Callable[..., None]:  # type: ignore[no-untyped-def]
    """populate(n, user=...): n models (half private to `user`), n finished jobs, n usage rows over two
    weeks, from both sources, through the user's API key too."""

    def populate(n: int, *, user: Any, tag: str = "") -> None:
        key, _ = ApiKey.issue(user=user, name=f"bulk-{tag}{n}-{uuid.uuid4().hex[:6]}")
        now = timezone.now()
        for i in range(n):
            repo_id = f"bulk{tag}/model-{n}-{i}-{uuid.uuid4().hex[:6]}"
            snap = make_snapshot(
                repo_id, owner=user, private=i % 2 == 0, last_used_at=now - timedelta(hours=i)
            )
            if i % 3 == 0:
                Repository.objects.filter(id=snap.repository_id).update(update_available=True)
            make_job(
                snap,
                user=user,
                state=DownloadJob.State.FAILED if i % 4 == 0 else DownloadJob.State.SUCCEEDED,
                error_code="network" if i % 4 == 0 else "",
                error_message="boom" if i % 4 == 0 else "",
            )
            usage = Usage.objects.create(
                user=None if i % 2 else user,
                api_key=key if i % 2 else None,
                snapshot=snap,
                source=Usage.Source.API if i % 2 else Usage.Source.BROWSER,
                prompt_tokens=10 + i,
                completion_tokens=20 + i,
                ttft_ms=50.0 + i,
                tokens_per_second=30.0 + i % 7,
            )
            Usage.objects.filter(id=usage.id).update(created_at=now - timedelta(days=i % 14, minutes=i))
        # A few active downloads too.
        for i in range(min(n, 5)):
            snap = make_snapshot(
                f"bulk{tag}/active-{n}-{i}-{uuid.uuid4().hex[:6]}",
                owner=user,
                status=Snapshot.Status.DOWNLOADING,
            )
            make_job(snap, user=user, state=DownloadJob.State.RUNNING, bytes_done=100, heartbeat_at=now)

    return populate


def count_queries(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return len(ctx.captured_queries)
