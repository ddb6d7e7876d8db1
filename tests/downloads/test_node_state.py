"""What each machine has, and its lifecycle (issue 17, items 2 and 4): a second node is a real Celery worker
with its own NODE_NAME, HF cache and memory budget, reading only its own queue; everything the web side knows
about it comes from its heartbeat and the database."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from devkit.processes import CeleryWorker, start_worker, wait_for
from models_app.models import ApiKey, Node, Snapshot
from models_app.services import chat, nodes, workers
from models_app.services import hub as hub_service
from models_app.services import plan as plan_service
from models_app.services.chat import ChatError
from models_app.services.errors import DownloadError
from models_app.services.node_facts import physical_memory
from tests.api.conftest import KeyClient
from tests.downloads.conftest import kill_hard, repo_dir, wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]

# Node B's INFERENCE_MEMORY_BUDGET: room for any test model, and a figure no machine has by chance.
NODE_B_BUDGET = 64 * 2**30 + 12345


class NodeB:
    """Another machine, as far as the product can tell. `start()` again after `kill()`: the machine is back."""

    def __init__(self, stack_env: dict[str, str], log_dir: Path, cache: Path, budget: int) -> None:
        self.name = f"node-b-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
        self.cache = cache
        self.env = {
            **stack_env,
            "NODE_NAME": self.name,
            "HF_HUB_CACHE": str(cache),
            "INFERENCE_MEMORY_BUDGET": str(budget),
        }
        self.log_dir = log_dir
        self.worker: CeleryWorker | None = None

    def start(self) -> NodeB:
        self.worker = start_worker(
            name=self.name,
            queues=workers.node_queue("downloads", self.name),
            env=self.env,
            log_dir=self.log_dir,
        )
        return self

    def kill(self) -> None:
        """SIGKILL, no goodbye: its presence key just stops being renewed."""
        assert self.worker is not None
        kill_hard(self.worker)

    def status(self) -> nodes.NodeStatus | None:
        return next((n for n in nodes.cluster() if n.name == self.name), None)


@pytest.fixture
def node_b(stack_env, process_log_dir, tmp_path: Path) -> Iterator[NodeB]:  # type: ignore[no-untyped-def]
    node = NodeB(stack_env, process_log_dir, tmp_path / "node-b-cache", NODE_B_BUDGET).start()
    yield node
    if node.worker is not None:
        node.worker.stop()


def test_each_node_publishes_its_disk_per_cache_root_and_its_memory(node_b: NodeB, settings) -> None:  # type: ignore[no-untyped-def]
    status = node_b.status()
    assert status is not None and status.state == nodes.UP and not status.this
    assert status.can_download and not status.can_infer  # it runs no inference worker
    # Its own cache root, on its own filesystem (a fresh folder: measured on the nearest existing parent).
    disk = status.disk["default"]
    assert disk["total"] == shutil.disk_usage(node_b.cache.parent).total
    assert 0 < disk["free"] <= disk["total"]
    # Its own memory budget (its environment's, not the web server's), beside the machine's figures.
    assert status.memory["budget"] == NODE_B_BUDGET != settings.INFERENCE_MEMORY_BUDGET
    assert (
        status.memory["total"] == physical_memory()
        and 0 < status.memory["available"] <= status.memory["total"]
    )
    # This machine is listed first, from the session's worker.
    here = nodes.cluster()[0]
    assert here.this and here.name == settings.NODE_NAME and here.state == nodes.UP and here.can_download


def test_a_pull_to_any_node_picks_the_one_with_room_and_memory_and_says_why(  # type: ignore[no-untyped-def]
    hub, publish, alice, node_b: NodeB, settings
) -> None:
    repo_id, sha = publish()

    # Both machines have the disk; this one's memory budget is too small for the model: node B is picked.
    settings.INFERENCE_MEMORY_BUDGET = 1
    plan = plan_service.plan_pull(repo_id, node="any")
    assert plan.node == node_b.name and plan.remote_node == node_b.name and plan.can_start
    by_node = {o.node: o for o in plan.options}
    assert set(by_node) == {settings.NODE_NAME, node_b.name}
    assert by_node[settings.NODE_NAME].memory.level == "amber" and by_node[settings.NODE_NAME].fits_disk
    # Node B's figures are its own, as its worker published them.
    assert plan.memory.level == "green" and plan.memory.budget_bytes == NODE_B_BUDGET
    published = node_b.status().disk["default"]["free"]  # its next beats may differ by what others wrote
    assert plan.disk_known and abs(plan.disk_free_bytes - published) < 2**30
    assert f"Picked {node_b.name}" in plan.node_reason and "memory green" in plan.node_reason
    assert f"{settings.NODE_NAME} (memory amber)" in plan.node_reason

    api = KeyClient(ApiKey.issue(user=alice, name="any-node")[1])
    response = api.post("/api/v1/pulls", {"repo_id": repo_id, "node": "any"}, content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["node"] == node_b.name and f"Picked {node_b.name}" in body["node_choice"]
    job = wait_job(body["id"])
    assert (job.state, job.snapshot.node) == ("succeeded", node_b.name), job.error_message
    assert (repo_dir(repo_id, node_b.cache) / "snapshots" / sha / "model.safetensors").is_file()

    # A plan for node B now knows from the database what its cache holds: nothing left to download there.
    again = plan_service.plan_pull(repo_id, node=node_b.name)
    assert again.cached_bytes == again.total_bytes > 0 and all(f.cached for f in again.files)
    assert again.to_download_bytes == 0 and again.disk_ok

    # The Pull page offers the choice and shows every machine's plan.
    page = Client()
    page.force_login(alice)
    form = page.get("/pull/").content.decode()
    assert 'value="any"' in form and f'value="{node_b.name}"' in form
    preview = page.post("/pull/", {"repo": repo_id, "revision": "main", "node": "any", "action": "preview"})
    html = preview.content.decode()
    assert preview.status_code == 200, html[:2000]
    assert 'data-testid="node-choice"' in html and f"Picked {node_b.name}" in html
    assert f'data-node="{settings.NODE_NAME}"' in html and f'data-node="{node_b.name}"' in html

    # Node B back with a budget too small for the model, this machine with its own: this one is picked.
    settings.INFERENCE_MEMORY_BUDGET = 0
    node_b.worker.stop()
    node_b.env["INFERENCE_MEMORY_BUDGET"] = "1000"
    node_b.start()
    plan = plan_service.plan_pull(repo_id, node="any")
    assert plan.node == settings.NODE_NAME and not plan.remote_node
    assert f"{node_b.name} (memory amber)" in plan.node_reason


def test_a_pull_to_any_node_with_no_room_anywhere_is_refused_naming_each(  # type: ignore[no-untyped-def]
    hub, publish, alice, node_b: NodeB, settings
) -> None:
    repo_id, _ = publish()
    settings.DOWNLOAD_DISK_RESERVE = 10**18  # no disk anywhere keeps an exabyte free

    with pytest.raises(DownloadError) as refused:
        hub_service.download_model(repo_id, user=alice, node="any")
    assert refused.value.code == "no_node_with_room"
    assert settings.NODE_NAME in refused.value.message and node_b.name in refused.value.message

    with pytest.raises(CommandError, match="no_node_with_room"):
        call_command("pull", repo_id, "--node", "any", "--no-wait")
    api = KeyClient(ApiKey.issue(user=alice, name="no-room")[1])
    response = api.post("/api/v1/pulls", {"repo_id": repo_id, "node": "any"}, content_type="application/json")
    assert response.status_code == 507 and response.json()["error"]["code"] == "no_node_with_room"
    assert not Snapshot.objects.filter(repository__repo_id=repo_id).exists()


def test_a_node_that_stops_is_down_its_models_unavailable_until_its_reconcile_brings_them_back(  # type: ignore[no-untyped-def]
    hub, publish, alice, staff, node_b: NodeB, settings
) -> None:
    repo_id, _ = publish()
    job = wait_job(hub_service.download_model(repo_id, user=alice, node=node_b.name))
    assert job.state == "succeeded", job.error_message
    snapshot = job.snapshot
    # Its worker's own reconcile (run as it started) remembered the machine.
    wait_for(lambda: Node.objects.filter(name=node_b.name).exists(), 30, "node B never reconciled")
    assert snapshot in chat.usable_snapshots(alice)
    with pytest.raises(CommandError, match="is up"):
        call_command("node-remove", node_b.name, "--yes")

    node_b.kill()
    wait_for(lambda: node_b.name in nodes.down_nodes(), 30, "node B still counted as up")

    status = node_b.status()
    assert status is not None and status.state == nodes.DOWN and status.last_seen
    # Unavailable, not deleted: the row is as it was, but nothing offers it.
    assert Snapshot.objects.get(id=snapshot.id).status == Snapshot.Status.READY
    assert snapshot not in chat.usable_snapshots(alice)
    with pytest.raises(ChatError) as refused:
        chat._pick_snapshot(alice, snapshot.id, None)
    assert refused.value.code == "node_down" and node_b.name in refused.value.message
    with pytest.raises(DownloadError) as no_pull:
        hub_service.download_model(repo_id, user=alice, node=node_b.name)
    assert no_pull.value.code == "unknown_node"
    plan = plan_service.plan_pull(repo_id, node="any")
    assert node_b.name not in {o.node for o in plan.options} and plan.node == settings.NODE_NAME
    # The pages say so: overview, health, models.
    client = Client()
    client.force_login(alice)
    for url in ("/", "/health/"):
        html = client.get(url).content.decode()
        assert f'data-node="{node_b.name}" data-state="down"' in html, url
    models_page = client.get("/models/").content.decode()
    assert f"{node_b.name} down: unavailable" in models_page
    assert f"/chat/?model={snapshot.id}" not in models_page
    assert f'data-node="{settings.NODE_NAME}" data-state="up"' in client.get("/").content.decode()

    # While it was away its row fell out of date (files intact): its reconcile on start puts it right.
    Snapshot.objects.filter(id=snapshot.id).update(status=Snapshot.Status.MISSING)
    node_b.start()
    wait_for(
        lambda: Snapshot.objects.filter(id=snapshot.id, status=Snapshot.Status.READY).exists(),
        30,
        "node B's reconcile did not bring its snapshot back",
    )
    assert node_b.name not in nodes.down_nodes()
    assert snapshot in chat.usable_snapshots(alice)
    assert chat._pick_snapshot(alice, snapshot.id, None) == snapshot


def test_removing_a_node_for_good_forgets_its_snapshots_not_its_files(  # type: ignore[no-untyped-def]
    hub, publish, alice, staff, node_b: NodeB
) -> None:
    repo_id, sha = publish()
    job = wait_job(hub_service.download_model(repo_id, user=alice, node=node_b.name))
    assert job.state == "succeeded", job.error_message
    wait_for(lambda: Node.objects.filter(name=node_b.name).exists(), 30, "node B never reconciled")
    node_row = Node.objects.get(name=node_b.name)
    admin = Client()
    admin.force_login(staff)
    delete_url = f"/admin/models_app/node/{node_row.id}/delete/"
    listing = admin.get("/admin/models_app/node/").content.decode()
    assert node_b.name in listing and f"/admin/models_app/node/{node_row.id}/" in listing
    assert admin.get(delete_url).status_code == 403  # a machine that is up cannot be removed

    node_b.kill()
    wait_for(lambda: node_b.name in nodes.down_nodes(), 30, "node B still counted as up")
    # The command alone only says what would go.
    call_command("node-remove", node_b.name)
    assert Snapshot.objects.filter(node=node_b.name).count() == 1

    assert admin.get(delete_url).status_code == 200  # the confirmation page
    response = admin.post(delete_url, {"post": "yes"})
    assert response.status_code == 302
    assert not Node.objects.filter(name=node_b.name).exists()
    assert not Snapshot.objects.filter(node=node_b.name).exists()
    job.refresh_from_db()
    assert job.snapshot_id is None and job.state == "succeeded"  # history stays
    # That machine's files are not this server's to touch.
    assert (repo_dir(repo_id, node_b.cache) / "snapshots" / sha / "model.safetensors").is_file()
    assert node_b.status() is None  # gone from every page
