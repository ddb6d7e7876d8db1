"""Who sees which snapshots and jobs through the selectors: the owner, another user, staff, and the system."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.utils import timezone

from models_app.models import DownloadJob, Snapshot
from models_app.selectors.cache import cache_totals, repo_usage_list
from models_app.selectors.jobs import job_get, job_list
from models_app.selectors.snapshots import model_list, snapshot_get, snapshot_list
from tests.factories import make_job, make_snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows(alice, bob):  # type: ignore[no-untyped-def]
    """Alice's private and gated models, a public one nobody owns, and a deleted public snapshot."""
    return {
        "private": make_snapshot("alice/private", owner=alice, private=True, size=3_000),
        "gated": make_snapshot("org/gated", owner=alice, gated=True, size=5_000),
        "public": make_snapshot("org/public", size=7_000),
        "deleted": make_snapshot("org/old", status=Snapshot.Status.DELETED, size=11_000),
    }


def _ids(snapshots) -> set[int]:  # type: ignore[no-untyped-def]
    return {s.id for s in snapshots}


def test_the_owner_sees_their_private_and_gated_models_and_the_public_one(rows, alice) -> None:
    assert _ids(snapshot_list(user=alice)) == _ids([rows["private"], rows["gated"], rows["public"]])
    assert snapshot_get(user=alice, snapshot_id=rows["private"].id) == rows["private"]


def test_another_user_sees_only_the_public_one_and_gets_none_for_the_rest(rows, bob) -> None:
    assert _ids(snapshot_list(user=bob)) == {rows["public"].id}
    assert snapshot_get(user=bob, snapshot_id=rows["private"].id) is None
    assert snapshot_get(user=bob, snapshot_id=rows["gated"].id) is None
    assert [m.repo_id for m in model_list(user=bob)] == ["org/public"]


def test_staff_and_the_system_see_every_model(rows, staff) -> None:
    live = _ids([rows["private"], rows["gated"], rows["public"]])
    assert _ids(snapshot_list(user=staff)) == live
    assert _ids(snapshot_list(user=None)) == live
    assert {m.snapshot_id for m in model_list(user=None)} == live


def test_a_deleted_snapshot_is_listed_only_when_asked_for_but_can_still_be_opened(rows, bob) -> None:
    deleted = rows["deleted"]
    assert deleted.id not in _ids(snapshot_list(user=bob))
    assert deleted.id in _ids(snapshot_list(user=bob, include_deleted=True))
    assert _ids(snapshot_list(user=bob, statuses=[Snapshot.Status.DELETED])) == {deleted.id}
    assert snapshot_get(user=bob, snapshot_id=deleted.id) == deleted


def test_jobs_are_seen_by_whoever_asked_for_them_and_by_staff(rows, alice, bob, staff) -> None:
    alices = make_job(rows["private"], user=alice)
    bobs = make_job(rows["public"], user=bob, state=DownloadJob.State.RUNNING)

    assert _ids(job_list(user=alice)) == {alices.id}
    assert _ids(job_list(user=bob)) == {bobs.id}
    assert _ids(job_list(user=staff)) == _ids(job_list(user=None)) == {alices.id, bobs.id}
    assert job_get(user=bob, job_id=alices.id) is None
    assert job_get(user=staff, job_id=alices.id) == alices
    # A job of a public repo is still its requester's: the token, the node and the error are theirs.
    assert job_get(user=alice, job_id=bobs.id) is None


def test_job_list_filters_active_finished_and_recent(rows, alice) -> None:
    running = make_job(rows["private"], user=alice, state=DownloadJob.State.RUNNING, revision="a")
    done = make_job(rows["private"], user=alice)
    long_ago = make_job(rows["public"], user=alice, state=DownloadJob.State.FAILED)
    DownloadJob.objects.filter(id=long_ago.id).update(finished_at=timezone.now() - timezone.timedelta(days=1))

    assert _ids(job_list(user=alice, active=True)) == {running.id}
    assert _ids(job_list(user=alice, active=False)) == {done.id, long_ago.id}
    since = timezone.now() - timezone.timedelta(minutes=10)
    assert _ids(job_list(user=alice, active_or_finished_since=since)) == {running.id, done.id}
    # Newest first, whatever the filter.
    assert list(job_list(user=alice)) == sorted(
        [running, done, long_ago], key=lambda j: (j.created_at, j.id), reverse=True
    )


def test_cache_totals_count_what_each_user_may_see_and_everything_for_the_disk(rows, alice, bob) -> None:
    # Left out everywhere: another node's snapshot, and one in a root this node no longer has.
    Snapshot.objects.filter(id=make_snapshot("org/elsewhere", size=13_000).id).update(node="other-node")
    Snapshot.objects.filter(id=make_snapshot("org/gone-root", size=17_000).id).update(cache_root="usb")

    assert cache_totals(user=alice).size_bytes == 3_000 + 5_000 + 7_000
    assert cache_totals(user=bob).size_bytes == 7_000
    everyone = cache_totals(user=None)
    assert everyone.size_bytes == 3_000 + 5_000 + 7_000
    assert everyone.snapshots == 3
    assert everyone.roots[0].name == next(iter(settings.CACHE_ROOTS))
    assert everyone.roots[0].by_status == {Snapshot.Status.READY: 3}
    # The Cache page's repo list adds up to the same total.
    assert sum(r["bytes"] for r in repo_usage_list(user=alice)) == cache_totals(user=alice).size_bytes
    assert [r["repository__repo_id"] for r in repo_usage_list(user=alice)] == [
        "org/public",
        "org/gated",
        "alice/private",
    ]
