from __future__ import annotations

import json

import pytest
from django.urls import reverse

from tests.support.redis_server import RedisServer


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
def test_healthz_is_green_with_both_workers_connected(client, download_worker, inference_worker) -> None:  # type: ignore[no-untyped-def]
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
def test_healthz_says_redis_is_down_within_seconds(client, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path / "redis").start()
    settings.REDIS_URL = server.url
    assert client.get("/healthz").json()["redis"]["ok"] is True
    server.kill()
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
    from models_app.models import Repository, Snapshot
    from models_app.services import inference
    from tests.support.processes import wait_for

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
