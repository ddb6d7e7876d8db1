"""The maintenance tasks are thin adapters; reconcile runs when a maintenance worker starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from models_app.models import Repository, Snapshot
from models_app.services.reconcile import reconcile_cache as reconcile_service
from tasks import maintenance
from tests.cache.conftest import age, model_files, snapshot_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def old_model(hub, fetch, new_repo_id) -> tuple[str, str]:
    repo_id = new_repo_id()
    sha = hub.create_repo(repo_id, model_files(repo_id))
    fetch(repo_id)
    reconcile_service()
    age(snapshot_of(repo_id, sha), used_days=90, downloaded_days=90)
    return repo_id, sha


def test_clean_cache_does_nothing_without_an_age_or_size_policy(old_model, settings) -> None:
    settings.CACHE_CLEANUP_MAX_AGE = None
    settings.CACHE_CLEANUP_MAX_SIZE = None

    assert maintenance.clean_cache() is None
    assert snapshot_of(*old_model).status == Snapshot.Status.READY


def test_clean_cache_applies_the_configured_policy(old_model, settings) -> None:
    settings.CACHE_CLEANUP_MAX_AGE = 30 * 86400
    settings.CACHE_CLEANUP_MAX_SIZE = None
    settings.CACHE_CLEANUP_KEEP_REVISIONS = 1

    result = maintenance.clean_cache()

    assert result["deleted"] == 1 and result["freed"] == sum(
        len(v) for v in model_files(old_model[0]).values()
    )
    assert snapshot_of(*old_model).status == Snapshot.Status.DELETED


def test_reconcile_imports_and_asks_the_hub_about_what_it_imported(
    hub, fetch, new_repo_id, monkeypatch
) -> None:
    repo_id = new_repo_id()
    hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    # Run the follow-up update check in-process instead of queueing it.
    monkeypatch.setattr(maintenance.check_updates, "delay", lambda **kw: maintenance.check_updates(**kw))

    report = maintenance.reconcile_cache()

    assert report["imported"] == [f"{repo_id}@{hub.head_sha(repo_id)}"]
    repo = Repository.objects.get(repo_id=repo_id)
    assert repo.remote_checked_at is not None and repo.private is False  # public on the Hub: visible to all


def test_check_updates_task_summarises(hub, fetch, new_repo_id) -> None:
    repo_id = new_repo_id()
    hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    reconcile_service()
    hub.commit(repo_id, {"config.json": b'{"model_type": "llama", "v": 3}'})

    assert maintenance.check_updates(repo_ids=[repo_id]) == {"checked": 1, "updates": [repo_id], "errors": {}}


def _worker(*queues: str) -> SimpleNamespace:
    consume_from = {q: SimpleNamespace(name=q) for q in queues}
    return SimpleNamespace(
        app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=consume_from)))
    )


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        (("downloads", "maintenance"), ["maintenance"]),
        (("inference",), []),
        (("maintenance", "node.box-1"), ["node.box-1"]),  # where the cache and the dead pids are
    ],
)
def test_a_maintenance_worker_reaps_then_reconciles_when_it_starts(
    monkeypatch, settings, queues, expected
) -> None:
    settings.NODE_NAME = "box-1"
    sent: list[tuple[str, str]] = []
    for task in (maintenance.reap_jobs, maintenance.reconcile_cache):
        monkeypatch.setattr(
            task, "apply_async", lambda task=task, **kw: sent.append((task.name, kw["queue"]))
        )

    maintenance.reconcile_on_worker_start(sender=_worker(*queues))

    # The reaper first: the jobs whose process died with the previous worker are requeued (partial files kept
    # for them) before the reconcile looks for orphaned partial files.
    assert sent == [
        (name, queue)
        for queue in expected
        for name in ("maintenance.reap_jobs", "maintenance.reconcile_cache")
    ]
