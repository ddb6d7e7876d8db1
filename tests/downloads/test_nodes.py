"""Several machines: a second node (its own worker, its own HF cache, reading only its own queue `node.<name>`)
gets the pulls that name it, and the maintenance beat schedules once reaches every node's cache."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.processes import CeleryWorker, start_worker, wait_for
from models_app.models import Snapshot
from models_app.services import hub as hub_service
from models_app.services import inference, workers
from models_app.services.errors import DownloadError
from models_app.services.routing import NodeDown
from tasks.maintenance import on_every_node
from tests.downloads.conftest import repo_dir, wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]


@pytest.fixture
def node_b(stack_env, process_log_dir, tmp_path: Path) -> Iterator[tuple[str, Path, CeleryWorker]]:  # type: ignore[no-untyped-def]
    """Another machine, as far as the product can tell: its own NODE_NAME and cache, and a worker that reads
    only that node's queue (so nothing can reach it by the shared queues)."""
    name = f"node-b-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    cache = tmp_path / "node-b-cache"
    worker = start_worker(
        name=name,
        queues=workers.node_queue("downloads", name),
        env={**stack_env, "NODE_NAME": name, "HF_HUB_CACHE": str(cache)},
        log_dir=process_log_dir,
    )
    yield name, cache, worker
    worker.stop()


def test_a_pull_for_another_node_runs_there_and_lands_in_its_cache(
    hub, publish, alice, node_b, settings
) -> None:  # type: ignore[no-untyped-def]
    name, cache, worker = node_b
    repo_id, sha = publish()

    job = wait_job(hub_service.download_model(repo_id, user=alice, node=name))

    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    assert job.node == name and job.worker == worker.hostname  # not the session worker on the shared queue
    snapshot = job.snapshot
    assert snapshot.node == name and snapshot.commit_sha == sha
    assert snapshot.path == str(repo_dir(repo_id, cache) / "snapshots" / sha)
    assert (Path(snapshot.path) / "model.safetensors").is_file()
    assert not repo_dir(repo_id).exists()  # nothing in this machine's cache

    # Chat with it goes to that machine's inference queue when it has a worker there; with none, it is down,
    # said at once and by name (the shared queue would hand it to a machine without the files).
    settings.REDIS_PREFIX = f"mlxcr-test-nodes-{time.monotonic_ns()}"  # presence of our own, none else's
    with pytest.raises(NodeDown, match=name):
        inference.queue_for_snapshot(snapshot.id)
    workers.beat_once(hostname=f"inference@{name}", queues=["inference", f"inference.{name}"], started_at=0)
    assert inference.queue_for_snapshot(snapshot.id) == f"inference.{name}"


def test_a_pull_for_a_node_without_workers_is_refused_up_front(alice, node_b) -> None:  # type: ignore[no-untyped-def]
    name, _, _ = node_b
    with pytest.raises(DownloadError) as refused:
        hub_service.download_model("org/anything", user=alice, node="nowhere")
    assert refused.value.code == "unknown_node"
    assert "No download worker is running on node 'nowhere'" in str(refused.value)
    assert name in refused.value.action  # the nodes that can take it


def test_the_maintenance_schedule_reaches_every_nodes_cache(hub, publish, alice, node_b) -> None:  # type: ignore[no-untyped-def]
    """Beat fires once for the cluster; on_every_node sends the reconcile to each node's own queue, so node
    B re-imports a model of its cache whose row was lost, though no worker of this machine can see it."""
    name, _, _ = node_b
    repo_id, sha = publish()
    job = wait_job(hub_service.download_model(repo_id, user=alice, node=name))
    assert job.state == "succeeded", job.error_message
    Snapshot.objects.filter(id=job.snapshot_id).delete()

    assert on_every_node("maintenance.reconcile_cache") == [workers.node_queue("maintenance", name)]

    def reimported() -> bool:
        return Snapshot.objects.filter(
            repository__repo_id=repo_id, commit_sha=sha, node=name, status=Snapshot.Status.READY
        ).exists()

    wait_for(reimported, 30, f"node {name} did not re-import {repo_id}")


def test_with_no_node_queues_the_schedule_uses_the_shared_queue(db, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_PREFIX = f"mlxcr-test-nodes-{time.monotonic_ns()}"  # no live worker at all
    assert on_every_node("maintenance.clean_cache") == ["maintenance"]
    assert on_every_node("inference.expire_idle", "inference") == ["inference"]
