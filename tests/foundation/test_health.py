from __future__ import annotations

import json

import pytest
from django.urls import reverse

from devkit.redis_server import RedisServer


@pytest.mark.django_db
def test_health_page_requires_login(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("health"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.django_db
def test_login_page_renders_without_any_cdn(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get(reverse("login")).content.decode()
    assert 'name="username"' in body
    assert "https://" not in body and "//cdn" not in body


@pytest.mark.django_db(transaction=True)
def test_healthz_is_green_with_both_workers_connected(
    client, staff, download_worker, inference_worker
) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").status_code == 200  # anonymous: the load balancer's probe
    client.force_login(staff)  # worker names, paths and versions are for staff
    response = client.get("/healthz")
    report = response.json()
    assert response.status_code == 200, report
    assert report["ok"] is True
    assert report["database"]["ok"] and report["redis"]["ok"]
    names = {
        q: [w["name"] for w in report["queues"][q]["workers"]]
        for q in ("downloads", "maintenance", "inference")
    }
    assert download_worker.hostname in names["downloads"]
    assert download_worker.hostname in names["maintenance"]
    assert inference_worker.hostname in names["inference"]
    assert report["cache"][0]["name"] == "default" and report["cache"][0]["disk"]["free"] > 0
    assert report["mlx"]["version"]


@pytest.mark.django_db(transaction=True)
def test_health_page_shows_each_component(client, staff, download_worker, inference_worker) -> None:  # type: ignore[no-untyped-def]
    client.force_login(staff)
    body = client.get(reverse("health")).content.decode()
    for component in (
        "database",
        "redis",
        "queue-downloads",
        "queue-maintenance",
        "queue-inference",
        "mlx",
        "cache-default",
    ):
        assert f'data-component="{component}"' in body
    assert download_worker.hostname in body
    assert inference_worker.hostname in body


@pytest.mark.django_db
@pytest.mark.processes  # starts and kills a redis-server of its own
def test_healthz_says_redis_is_down_within_seconds(client, staff, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path / "redis").start()
    settings.REDIS_URL = server.url
    assert client.get("/healthz").json()["redis"]["ok"] is True
    server.kill()
    anonymous = client.get("/healthz")
    assert anonymous.status_code == 503 and anonymous.json()["redis"] == {"ok": False}
    client.force_login(staff)  # the error text (it names hosts and ports) is for staff
    # The Redis client's 2 s socket timeouts bound this request; the test's own timeout guards a hang.
    response = client.get("/healthz")
    report = json.loads(response.content)
    assert response.status_code == 503
    assert report["ok"] is False
    assert report["redis"]["ok"] is False
    assert "Connection" in report["redis"]["error"] or "Timeout" in report["redis"]["error"]
    assert report["database"]["ok"] is True


@pytest.mark.django_db(transaction=True)
def test_health_page_lists_loaded_models_with_an_unload_button(
    client, staff, inference_worker, tiny_model_path, settings
) -> None:  # type: ignore[no-untyped-def]
    from devkit.processes import wait_for
    from models_app.models import Repository, Snapshot
    from models_app.services import inference

    repo = Repository.objects.create(repo_id="test/health-loaded")
    snapshot = Snapshot.objects.create(
        repository=repo,
        commit_sha="b" * 40,
        node=settings.NODE_NAME,
        path=str(tiny_model_path),
        status="ready",
    )
    client.force_login(staff)
    inference.request_load(snapshot.id)
    wait_for(
        lambda: "test/health-loaded" in client.get(reverse("health")).content.decode(), 30, "never loaded"
    )
    body = client.get(reverse("health")).content.decode()
    assert reverse("model_unload", args=[snapshot.id]) in body

    inference.request_unload(snapshot.id)
    wait_for(
        lambda: "test/health-loaded" not in client.get(reverse("health")).content.decode(),
        30,
        "never unloaded",
    )


# --- Who sees what (issue 11 item 3) ------------------------------------------------------------------------


@pytest.fixture
def alices_loaded_private_model(alice, inference_worker, tiny_model_path, settings):  # type: ignore[no-untyped-def]
    """Alice's private model, loaded in the real inference worker (by her), unloaded afterwards."""
    from devkit.processes import wait_for
    from models_app.models import Repository, Snapshot
    from models_app.services import inference

    repo = Repository.objects.create(repo_id="alice/secret-health", private=True, owner=alice)
    snapshot = Snapshot.objects.create(
        repository=repo,
        commit_sha="c" * 40,
        node=settings.NODE_NAME,
        path=str(tiny_model_path),
        status="ready",
    )
    inference.request_load(snapshot.id, user=alice)
    wait_for(lambda: snapshot.id in inference.loaded_models(), 60, "the model never loaded")
    yield snapshot
    inference.request_unload(snapshot.id, user=None)
    wait_for(lambda: snapshot.id not in inference.loaded_models(), 60, "the model never unloaded")


@pytest.mark.django_db(transaction=True)
def test_health_shows_each_user_only_what_they_may_see(  # type: ignore[no-untyped-def]
    alice, bob, staff, download_worker, inference_worker, alices_loaded_private_model, settings
) -> None:
    from django.test import Client

    from models_app.models import ApiKey
    from tests.api.conftest import KeyClient

    cache_path = str(settings.CACHE_ROOTS["default"])
    secrets = {
        "alice/secret-health": "the private model's name",
        cache_path: "the cache path",
        inference_worker.hostname: "a worker's name",
        download_worker.hostname: "a worker's name",
    }

    def leaks(body: str) -> list[str]:
        return [f"{what} ({text})" for text, what in secrets.items() if text in body]

    # Anonymous: ok / not ok per component, nothing else: what a load balancer needs.
    anonymous = Client().get("/healthz")
    report = anonymous.json()
    assert anonymous.status_code == 200, report
    assert report["ok"] is True
    assert set(report) == {"ok", "database", "redis", "queues", "mlx", "cache", "nodes"}
    assert report["nodes"] == {"up": 1, "down": 0}  # counts: machine names map the cluster
    assert report["database"] == {"ok": True} and report["redis"] == {"ok": True}
    assert report["mlx"] == {"ok": True}
    assert report["queues"] == {q: {"ok": True} for q in ("downloads", "maintenance", "inference")}
    assert report["cache"] == [{"name": "default", "ok": True}]
    assert not leaks(anonymous.content.decode())
    assert "version" not in anonymous.content.decode()

    # Bob (not staff): components, counts, disk space, no private model of Alice's, no path, no worker name,
    # no version; through the page, /healthz and the API alike.
    bob_client = Client()
    bob_client.force_login(bob)
    bob_api = KeyClient(ApiKey.issue(user=bob, name="bob-health")[1])
    for response in (bob_client.get("/health/"), bob_client.get("/healthz"), bob_api.get("/api/v1/health")):
        body = response.content.decode()
        assert response.status_code == 200, body[:500]
        assert not leaks(body), leaks(body)
        assert 'data-component="cache-default"' in body or '"cache"' in body
    bob_report = bob_api.get("/api/v1/health").json()
    assert "versions" not in bob_report and "version" not in bob_report["mlx"]
    assert bob_report["queues"]["inference"] == {"ok": True, "worker_count": 1}
    assert bob_report["cache"][0]["disk"]["free"] > 0 and "path" not in bob_report["cache"][0]
    assert bob_report["mlx"]["workers"][0]["loaded_models"] == []
    # Every machine with what a pull plan needs (disk per cache root, memory), never its workers' names.
    [node] = bob_report["nodes"]
    assert (node["name"], node["state"], node["can_download"], node["can_infer"]) == (
        settings.NODE_NAME,
        "up",
        True,
        True,
    )
    assert node["disk"]["default"]["free"] > 0 and node["memory"]["budget"] > 0 and "workers" not in node
    assert node["loaded_models"] == []  # Alice's private model is not Bob's business

    # Alice sees her own model (she loaded it, so she may unload it), still no path or worker name.
    alice_client = Client()
    alice_client.force_login(alice)
    page = alice_client.get("/health/").content.decode()
    assert leaks(page) == ["the private model's name (alice/secret-health)"]
    assert f"/models/{alices_loaded_private_model.id}/unload/" in page

    # Staff see everything.
    staff_client = Client()
    staff_client.force_login(staff)
    page = staff_client.get("/health/").content.decode()
    assert all(text in page for text in secrets), leaks(page)
    staff_report = staff_client.get("/healthz").json()
    assert staff_report["versions"]["django"] and staff_report["mlx"]["version"]
