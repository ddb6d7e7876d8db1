"""clean_cache: the dry run is exactly what the real run deletes; busy snapshots and live partial files stay."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from huggingface_hub import scan_cache_dir

from models_app.models import DownloadJob, Repository, Snapshot
from models_app.services import cleanup
from models_app.services.cache import UnknownCacheRoot
from models_app.services.cleanup import clean_cache
from models_app.services.reconcile import reconcile_cache
from tests.cache.conftest import age, model_files, snapshot_of

pytestmark = pytest.mark.django_db

DAY = 86400


def _folder(cache_root: Path, repo_id: str) -> Path:
    return cache_root / f"models--{repo_id.replace('/', '--')}"


def _partial(cache_root: Path, repo_id: str, name: str, *, age_seconds: float, size: int = 1234) -> Path:
    """A leftover of an interrupted download (huggingface_hub names them blobs/<etag>.<8 hex>.incomplete)."""
    path = _folder(cache_root, repo_id) / "blobs" / f"{name}.0badc0de.incomplete"
    path.write_bytes(b"\0" * size)
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def _cache_bytes(cache_root: Path) -> int:
    info = scan_cache_dir(cache_root)
    return info.size_on_disk + info.incomplete_size_on_disk


def _key(item) -> tuple:  # type: ignore[no-untyped-def]
    return (item.kind, item.repo_id, item.commit_sha, item.path, item.reason, item.bytes)


@pytest.fixture
def publish(hub, fetch, new_repo_id):  # type: ignore[no-untyped-def]
    """Publish and download a one-revision repo (unique content, so no blob is shared between repos)."""

    def publish(stem: str = "model") -> tuple[str, str]:
        repo_id = new_repo_id(stem)
        sha = hub.create_repo(repo_id, model_files(repo_id))
        fetch(repo_id)
        return repo_id, sha

    return publish


def test_the_real_run_deletes_exactly_what_the_dry_run_lists(
    publish, hub, fetch, cache_root, settings
) -> None:
    superseded_id, superseded_old = publish("superseded")
    superseded_new = hub.commit(superseded_id, {"config.json": b'{"model_type": "llama", "v": 2}'})
    fetch(superseded_id)
    stale_id, stale_sha = publish("stale")
    recent_id, recent_sha = publish("recent")
    busy_id, busy_sha = publish("busy")
    reconcile_cache()
    age(snapshot_of(superseded_id, superseded_old), used_days=3, downloaded_days=5)
    age(snapshot_of(superseded_id, superseded_new), used_days=2, downloaded_days=1)
    age(snapshot_of(stale_id, stale_sha), used_days=40, downloaded_days=50)
    age(snapshot_of(recent_id, recent_sha), used_days=1, downloaded_days=60)
    # Loaded right now, and never mind that it was downloaded long ago.
    age(snapshot_of(busy_id, busy_sha), used_days=0, downloaded_days=100)
    orphan = _partial(cache_root, recent_id, "deadbeef", age_seconds=DAY)
    before = _cache_bytes(cache_root)

    dry = clean_cache(max_age=timedelta(days=30), keep_revisions=1)

    assert sorted((i.repo_id, i.commit_sha, i.reason) for i in dry.items) == sorted(
        [
            (superseded_id, superseded_old, "superseded revision"),
            (stale_id, stale_sha, "older than 30 days unused"),
            (recent_id, "", "orphaned partial file"),
        ]
    )
    assert dry.dry_run and dry.deleted == [] and orphan.exists()
    assert _cache_bytes(cache_root) == before
    sizes = {i.reason: i.bytes for i in dry.items}
    assert sizes["older than 30 days unused"] == sum(len(v) for v in model_files(stale_id).values())
    assert sizes["superseded revision"] == len(model_files(superseded_id)["config.json"])  # weights shared
    assert sizes["orphaned partial file"] == 1234

    real = clean_cache(max_age=30 * DAY, keep_revisions=1, dry_run=False)

    assert sorted(map(_key, real.items)) == sorted(map(_key, dry.items))
    assert sorted(map(_key, real.deleted)) == sorted(map(_key, dry.items))
    assert real.skipped == []
    assert real.bytes_freed == dry.total_bytes
    # What the plan said it would free is what left the disk.
    assert before - _cache_bytes(cache_root) == dry.total_bytes
    for item in dry.items:
        assert not Path(item.path).exists(), item
    assert not _folder(cache_root, stale_id).exists()
    for repo_id, sha in ((superseded_id, superseded_new), (recent_id, recent_sha), (busy_id, busy_sha)):
        assert (_folder(cache_root, repo_id) / "snapshots" / sha / "model.safetensors").is_file()
        assert snapshot_of(repo_id, sha).status == Snapshot.Status.READY
    assert snapshot_of(stale_id, stale_sha).status == Snapshot.Status.DELETED
    assert snapshot_of(superseded_id, superseded_old).status == Snapshot.Status.DELETED

    assert clean_cache(max_age=30 * DAY, keep_revisions=1).items == []  # nothing left to do


def test_a_size_budget_removes_the_least_recently_used_first(publish, cache_root) -> None:
    models = [publish(stem) for stem in ("oldest", "middle", "newest")]
    reconcile_cache()
    for (repo_id, sha), days in zip(models, (10, 5, 1), strict=True):
        age(snapshot_of(repo_id, sha), used_days=days, downloaded_days=20)
    total = _cache_bytes(cache_root)
    one = scan_cache_dir(cache_root).size_on_disk // 3

    plan = clean_cache(max_size=total - 1, keep_revisions=None)
    assert [(i.repo_id, i.reason) for i in plan.items] == [(models[0][0], "over size budget")]
    assert plan.items[0].bytes == one

    plan = clean_cache(max_size=total - one - 1, keep_revisions=None)
    assert [i.repo_id for i in plan.items] == [models[0][0], models[1][0]]

    plan = clean_cache(max_size=total, keep_revisions=None)
    assert plan.items == []

    real = clean_cache(max_size=total - one - 1, keep_revisions=None, dry_run=False)
    assert [i.repo_id for i in real.deleted] == [models[0][0], models[1][0]]
    assert _cache_bytes(cache_root) == one


def test_keep_revisions_keeps_the_newest_and_counts_shared_blobs_once(hub, fetch, new_repo_id) -> None:
    repo_id = new_repo_id()
    shas = [hub.create_repo(repo_id, model_files("a"))]
    fetch(repo_id)
    for version in (2, 3):
        shas.append(hub.commit(repo_id, {"config.json": b'{"model_type": "llama", "v": %d}' % version}))
        fetch(repo_id)
    reconcile_cache()
    for days, sha in zip((3, 2, 1), shas, strict=True):
        age(snapshot_of(repo_id, sha), downloaded_days=days)

    keep_two = clean_cache(keep_revisions=2)
    assert [i.commit_sha for i in keep_two.items] == [shas[0]]
    assert keep_two.items[0].bytes == len(model_files("a")["config.json"])  # the weights are shared

    keep_one = clean_cache(keep_revisions=1, dry_run=False)
    assert sorted(i.commit_sha for i in keep_one.deleted) == sorted(shas[:2])
    assert keep_one.bytes_freed == len(model_files("a")["config.json"]) + len(
        b'{"model_type": "llama", "v": 2}'
    )
    assert [s.commit_sha for s in Snapshot.objects.filter(status=Snapshot.Status.READY)] == [shas[2]]

    assert clean_cache(keep_revisions=None).items == []


def test_nothing_of_a_repo_with_an_active_download_is_touched(
    publish, hub, fetch, cache_root, settings
) -> None:
    repo_id, old = publish()
    hub.commit(repo_id, {"config.json": b'{"model_type": "llama", "v": 2}'})
    fetch(repo_id)
    reconcile_cache()
    age(snapshot_of(repo_id, old), used_days=90, downloaded_days=90)
    DownloadJob.objects.create(
        repository=Repository.objects.get(repo_id=repo_id), revision="dev", node=settings.NODE_NAME,
        state=DownloadJob.State.QUEUED,
    )  # fmt: skip

    plan = clean_cache(max_age=DAY, max_size=1, keep_revisions=1, dry_run=False)

    assert plan.items == []
    assert len(list((_folder(cache_root, repo_id) / "snapshots").iterdir())) == 2


def test_partial_files_go_unless_a_live_download_may_be_writing_them(publish, cache_root, settings) -> None:
    orphan_id, _ = publish("orphan")
    owned_id, _ = publish("owned")
    stalled_id, _ = publish("stalled")
    fresh_id, _ = publish("fresh")
    requeued_id, _ = publish("requeued")
    reconcile_cache()
    now = timezone.now()
    for repo_id, heartbeat in ((owned_id, now), (stalled_id, now - timedelta(hours=1))):
        DownloadJob.objects.create(
            repository=Repository.objects.get(repo_id=repo_id), revision="dev", node=settings.NODE_NAME,
            state=DownloadJob.State.RUNNING, heartbeat_at=heartbeat,
        )  # fmt: skip
    DownloadJob.objects.create(
        repository=Repository.objects.get(repo_id=requeued_id), revision="dev", node=settings.NODE_NAME,
        state=DownloadJob.State.QUEUED,
    )  # fmt: skip
    orphan = _partial(cache_root, orphan_id, "a" * 64, age_seconds=3 * DAY)
    owned = _partial(
        cache_root, owned_id, "b" * 64, age_seconds=3 * DAY
    )  # old file, job alive: a slow server
    stalled = _partial(cache_root, stalled_id, "c" * 64, age_seconds=3 * DAY)  # its job stopped beating
    fresh = _partial(cache_root, fresh_id, "d" * 64, age_seconds=0)  # another tool downloading right now
    # A crashed attempt's file, its job requeued: the next attempt resumes it (hub_resume).
    requeued = _partial(cache_root, requeued_id, "f" * 64, age_seconds=3 * DAY)

    dry = clean_cache(keep_revisions=None)
    real = clean_cache(keep_revisions=None, dry_run=False)

    expected = sorted([str(orphan), str(stalled)])
    assert sorted(i.path for i in dry.items) == expected
    assert sorted(i.path for i in real.deleted) == expected
    assert {i.reason for i in real.deleted} == {"orphaned partial file"}
    assert real.bytes_freed == 2 * 1234
    assert not orphan.exists() and not stalled.exists()
    assert owned.exists() and fresh.exists() and requeued.exists()


def test_a_partial_file_owned_by_a_job_on_another_node_is_an_orphan_here(
    publish, cache_root, settings
) -> None:
    repo_id, _ = publish()
    reconcile_cache()
    DownloadJob.objects.create(
        repository=Repository.objects.get(repo_id=repo_id), revision="dev", node="elsewhere",
        state=DownloadJob.State.RUNNING, heartbeat_at=timezone.now(),
    )  # fmt: skip
    partial = _partial(cache_root, repo_id, "e" * 64, age_seconds=DAY)

    assert [i.path for i in clean_cache(keep_revisions=None).items] == [str(partial)]


def test_a_snapshot_used_after_the_plan_was_made_is_skipped(publish, monkeypatch) -> None:
    repo_id, sha = publish()
    reconcile_cache()
    age(snapshot_of(repo_id, sha), used_days=60, downloaded_days=60)
    plan_root = cleanup._plan_root

    def plan_then_chat(*args, **kwargs):  # type: ignore[no-untyped-def]
        plan_root(*args, **kwargs)
        Snapshot.objects.filter(commit_sha=sha).update(last_used_at=timezone.now())  # a chat starts

    monkeypatch.setattr(cleanup, "_plan_root", plan_then_chat)

    plan = clean_cache(max_age=DAY, dry_run=False)

    assert [i.commit_sha for i in plan.items] == [sha]
    assert plan.deleted == [] and plan.bytes_freed == 0
    assert plan.skipped == [f"{repo_id}@{sha}: in use since the plan was made"]
    assert snapshot_of(repo_id, sha).status == Snapshot.Status.READY


def test_an_unknown_cache_root_is_refused_before_anything_is_touched(cache_root) -> None:
    with pytest.raises(UnknownCacheRoot):
        clean_cache(cache="usb-stick", dry_run=False)


# --- huggingface_hub's shared Xet store (HUB_PROTOCOL.md §9) ------------------------------------------------


def test_cleanup_finds_an_orphaned_shared_store_entry_and_removes_it(
    xet_fetch, cache_root, new_repo_id
) -> None:
    hub, fetch = xet_fetch
    repo_id = new_repo_id("xet")
    hub.create_repo(repo_id, model_files("a", weights=os.urandom(300_000)))
    weights = fetch(repo_id) / "model.safetensors"
    entry = weights.resolve()
    assert entry.parent.parent == cache_root / "blobs"  # in the shared store
    # The repo's folder goes by other means (rm -rf, a crash mid-delete): its store entry stays, linked by no one.
    shutil.rmtree(weights.parents[2])

    preview = clean_cache(keep_revisions=None)

    shared = [i for i in preview.items if i.kind == "shared"]
    assert [(i.path, i.bytes, i.reason) for i in shared] == [(str(entry), 300_000, cleanup.ORPHANED_SHARED)]
    assert entry.exists()  # a preview touches nothing

    done = clean_cache(keep_revisions=None, dry_run=False)

    assert not entry.exists() and not Path(f"{entry}.refs").exists()
    assert done.bytes_freed == 300_000 and [i.kind for i in done.deleted] == ["shared"]


def test_an_entry_shared_by_two_removed_repos_is_counted_once_and_freed(
    xet_fetch, cache_root, new_repo_id
) -> None:
    hub, fetch = xet_fetch
    weights = os.urandom(300_000)
    first, second = new_repo_id("xet-a"), new_repo_id("xet-b")
    hub.create_repo(first, model_files("a", weights=weights))
    hub.create_repo(second, model_files("b", weights=weights))  # same weights: one store entry
    entry = (fetch(first) / "model.safetensors").resolve()
    assert (fetch(second) / "model.safetensors").resolve() == entry
    reconcile_cache()
    for snapshot in Snapshot.objects.all():
        age(snapshot, used_days=90)
    before = _cache_bytes(cache_root)

    preview = clean_cache(max_age=DAY, keep_revisions=None)

    assert sorted(i.kind for i in preview.items) == ["shared", "snapshot", "snapshot"]
    assert [i.bytes for i in preview.items if i.kind == "shared"] == [300_000]
    done = clean_cache(max_age=DAY, keep_revisions=None, dry_run=False)
    assert not entry.exists()
    freed = before - _cache_bytes(cache_root)
    # What the preview promised is what went, and the shared bytes count once.
    assert done.bytes_freed == preview.total_bytes == freed == before


def test_the_cache_page_and_api_show_the_shared_store_counted_once(
    xet_fetch, cache_root, new_repo_id, client, staff
) -> None:
    hub, fetch = xet_fetch
    weights = os.urandom(300_000)
    first, second = new_repo_id("xet-a"), new_repo_id("xet-b")
    hub.create_repo(first, model_files("a", weights=weights))
    hub.create_repo(second, model_files("b", weights=weights))
    fetch(first)
    fetch(second)
    reconcile_cache()
    client.force_login(staff)

    roots = client.get("/api/v1/cache").json()["roots"]

    # Both models list the 300 kB weights in their own size; the store holds them once, and says so.
    assert roots[0]["size_bytes"] > 600_000
    assert roots[0]["shared_store"] == {
        "entries": 1,
        "bytes": 300_000,
        "orphaned_entries": 0,
        "orphaned_bytes": 0,
    }
    html = client.get("/cache/").content.decode()
    assert "Shared Xet store" in html and "each counted once" in html
