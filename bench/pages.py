"""5. Pages and API at scale: SQL queries and server time with 10 snapshots (1,000 usage rows), then with
1,000 snapshots (100,000 usage rows, one finished download job per snapshot).

Runs in its own process (`python -m bench.pages`) with its own SQLite database, so the seeded rows never
reach the running product the other benchmarks use. Requests go through Django's test client in process,
with CaptureQueriesContext: the full middleware and view stack, without the network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.report import Row, Section

PAGES = {
    "models page": "/models/",
    "downloads page": "/downloads/",
    "/api/v1/models": "/api/v1/models",
    "usage page": "/usage/",
}
SCALES = ((10, 1_000), (1_000, 100_000))  # (snapshots, usage rows)
REPEATS = 5
_BATCH = 5_000


def _seed(snapshots: int, usage_rows: int, user: Any) -> None:
    """Top the database up to `snapshots` snapshots (each its own repo and finished job) and `usage_rows`."""
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from models_app.models import DownloadJob, Repository, Snapshot, Usage

    have = Snapshot.objects.count()
    now = timezone.now()
    files = [
        {"path": name, "size": size, "blob_id": f"{i:040x}"}
        for i, (name, size) in enumerate(
            [
                ("config.json", 1200),
                ("model.safetensors", 75_000_000),
                ("tokenizer.json", 2_100_000),
                ("tokenizer_config.json", 3900),
                ("special_tokens_map.json", 600),
                ("README.md", 4000),
            ]
        )
    ]
    repos = Repository.objects.bulk_create(
        Repository(repo_id=f"bench-org/model-{i:05d}", private=i % 7 == 0, owner=user if i % 7 == 0 else None)
        for i in range(have, snapshots)
    )
    snaps = Snapshot.objects.bulk_create(
        Snapshot(
            repository=repo,
            commit_sha=f"{i:040x}",
            ref="main",
            node=settings.NODE_NAME,
            path=str(
                Path(settings.HF_HUB_CACHE) / f"models--bench-org--model-{i:05d}" / "snapshots" / f"{i:040x}"
            ),
            size_bytes=79_000_000,
            files=files,
            status=Snapshot.Status.READY,
            model_type="llama",
            context_length=8192,
            downloaded_at=now - timedelta(hours=i),
            verified_at=now - timedelta(hours=i),
            last_used_at=now - timedelta(minutes=i),
        )
        for i, repo in zip(range(have, snapshots), repos, strict=True)
    )
    DownloadJob.objects.bulk_create(
        DownloadJob(
            repository=s.repository,
            revision="main",
            node=settings.NODE_NAME,
            requested_by=user,
            state=DownloadJob.State.SUCCEEDED,
            commit_sha=s.commit_sha,
            snapshot=s,
            bytes_done=s.size_bytes,
            bytes_total=s.size_bytes,
            files_done=6,
            files_total=6,
            attempts=1,
            started_at=now,
            finished_at=now,
        )
        for s in snaps
    )
    ids = list(Snapshot.objects.values_list("id", flat=True))
    have_usage = Usage.objects.count()
    for start in range(have_usage, usage_rows, _BATCH):
        Usage.objects.bulk_create(
            Usage(
                user=user,
                snapshot_id=ids[i % len(ids)],
                source="api" if i % 3 else "browser",
                prompt_tokens=100 + i % 900,
                completion_tokens=1 + i % 256,
                ttft_ms=50.0 + i % 500,
                tokens_per_second=5.0 + i % 20,
                finish_reason="stop",
            )
            for i in range(start, min(usage_rows, start + _BATCH))
        )
    # created_at is auto_now_add, which bulk_create fills with now: spread the rows over 30 days, as real
    # usage is, so per-day aggregates have days to group.
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE models_app_usage SET created_at = datetime('now', '-' || (id % 30) || ' days', "
                "'-' || (id % 1440) || ' minutes')"
            )


def _measure(client: Any, url: str) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)  # warm: templates compiled, caches filled
    times, queries, status, size = [], 0, 0, 0
    for _ in range(REPEATS):
        with CaptureQueriesContext(connection) as ctx:
            started = time.perf_counter()
            response = client.get(url)
            if hasattr(response, "streaming_content"):
                b"".join(response.streaming_content)
            times.append((time.perf_counter() - started) * 1000)
        queries, status = len(ctx.captured_queries), response.status_code
        size = len(response.content) if not getattr(response, "streaming", False) else 0
    return {
        "queries": queries,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "status": status,
        "bytes": size,
    }


def _child(out: Path) -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_superuser("bench", "bench@example.com", "bench-password")
    client = Client()
    client.force_login(user)
    results: dict[str, Any] = {}
    for snapshots, usage_rows in SCALES:
        started = time.perf_counter()
        _seed(snapshots, usage_rows, user)
        seed_seconds = time.perf_counter() - started
        results[str(snapshots)] = {
            "snapshots": snapshots,
            "usage_rows": usage_rows,
            "seed_seconds": seed_seconds,
            "pages": {name: _measure(client, url) for name, url in PAGES.items()},
        }
    out.write_text(json.dumps(results, indent=2))


def run(section: Section, *, work: Path, redis_url: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    out = work / "pages.json"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        "DEV_SECRETS": "1",
        "DEBUG": "0",
        "VAR_DIR": str(work / "var"),
        "HF_HUB_CACHE": str(work / "hf-cache"),
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": "mlxcr-bench-pages",
        "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
        "LOG_LEVEL": "ERROR",
    }
    subprocess.run([sys.executable, "-m", "bench.pages", "--out", str(out)], env=env, check=True, timeout=900)
    results = json.loads(out.read_text())
    section.raw.update(results)
    small, big = results[str(SCALES[0][0])], results[str(SCALES[1][0])]
    for name in PAGES:
        s, b = small["pages"][name], big["pages"][name]
        bench = f"{name} ({SCALES[1][0]:,} snapshots, {SCALES[1][1]:,} usage rows)"
        if b["status"] != 200:
            section.unavailable(bench, f"HTTP {b['status']}")
            continue
        section.add(
            Row(
                bench,
                "SQL queries",
                b["queries"],
                s["queries"],
                f"{SCALES[0][0]} snapshots",
                target="constant",
                met=b["queries"] == s["queries"],
            )
        )
        section.add(
            Row(
                bench,
                "server time, ms (median of 5)",
                b["ms_median"],
                s["ms_median"],
                f"{SCALES[0][0]} snapshots",
                unit="ms",
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    _child(parser.parse_args().out)
