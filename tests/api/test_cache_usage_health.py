"""/api/v1/cache, /api/v1/usage and /api/v1/health."""

from __future__ import annotations

import pytest

from models_app.models import ApiKey, Usage
from tests.api.conftest import KeyClient, error_of

pytestmark = pytest.mark.django_db


def test_cache_stats_count_what_the_user_may_see(alice_api: KeyClient, make_snapshot, bob) -> None:  # type: ignore[no-untyped-def]
    make_snapshot("org/a", size_bytes=100)
    make_snapshot("org/b", size_bytes=50, status="invalid")
    make_snapshot("bob/secret", size_bytes=1000, private=True, owner=bob)

    stats = alice_api.get("/api/v1/cache").json()
    [root] = stats["roots"]
    assert root["name"] == "default" and root["disk"]["free"] > 0
    assert (root["snapshots"], root["size_bytes"]) == (2, 150)
    assert root["by_status"] == {"ready": 1, "invalid": 1}


def test_cleanup_is_for_staff(alice_api: KeyClient, staff_api: KeyClient) -> None:
    refused = alice_api.get("/api/v1/cache/cleanup")
    assert refused.status_code == 403 and error_of(refused)["code"] == "permission_denied"
    assert alice_api.post("/api/v1/cache/cleanup", {}, content_type="application/json").status_code == 403

    plan = staff_api.get("/api/v1/cache/cleanup?keep_revisions=2&max_age_days=30")
    assert plan.status_code == 200, plan.json()
    assert plan.json()["dry_run"] is True and plan.json()["keep_revisions"] == 2
    assert plan.json()["max_age"] == 30 * 86400

    run = staff_api.post("/api/v1/cache/cleanup", {"dry_run": True}, content_type="application/json")
    assert run.status_code == 200 and run.json()["dry_run"] is True
    assert staff_api.get("/api/v1/cache/cleanup?keep_revisions=0").status_code == 400
    assert staff_api.get("/api/v1/cache/cleanup?cache=elsewhere").status_code == 400


def test_usage_is_the_users_own_and_everyones_for_staff(
    alice_api: KeyClient, staff_api: KeyClient, alice, bob, make_snapshot
) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("org/used")
    key = ApiKey.objects.get(user=alice)
    Usage.objects.create(
        user=alice, api_key=key, snapshot=snapshot, source="api", prompt_tokens=10, completion_tokens=5
    )
    Usage.objects.create(
        user=alice, snapshot=snapshot, source="browser", prompt_tokens=1, completion_tokens=1
    )
    Usage.objects.create(
        user=bob, snapshot=snapshot, source="browser", prompt_tokens=100, completion_tokens=100
    )

    mine = alice_api.get("/api/v1/usage?days=7").json()
    assert mine["totals"] == {"requests": 2, "prompt_tokens": 11, "completion_tokens": 6, "tokens": 17}
    assert {s["source"]: s["tokens"] for s in mine["by_source"]} == {"api": 15, "browser": 2}
    assert mine["by_model"] == [{"model": "org/used", "tokens": 17}]
    assert len(mine["by_day"]) == 7 and mine["by_day"][-1]["tokens_by_model"] == {"org/used": 17}
    assert mine["by_user"] == []

    everyone = staff_api.get("/api/v1/usage").json()
    assert everyone["totals"]["requests"] == 3
    assert {u["username"]: u["tokens"] for u in everyone["by_user"]} == {"alice": 17, "bob": 200}
    assert error_of(alice_api.get("/api/v1/usage?days=0"))["code"] == "invalid"

    only_bob = staff_api.get("/api/v1/usage?user=bob").json()
    assert only_bob["totals"]["requests"] == 1 and [u["username"] for u in only_bob["by_user"]] == ["bob"]
    assert alice_api.get("/api/v1/usage?user=alice").json()["totals"] == mine["totals"]
    assert error_of(alice_api.get("/api/v1/usage?user=bob"))["code"] == "permission_denied"
    assert error_of(staff_api.get("/api/v1/usage?user=nobody"))["code"] == "not_found"


def test_health_needs_a_key_and_reports_each_component(client, alice_api: KeyClient) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/v1/health").status_code == 401
    report = alice_api.get("/api/v1/health").json()
    assert {"ok", "database", "redis", "queues", "mlx", "cache"} <= set(report)
    assert report["database"]["ok"] is True


def test_cache_paths_are_for_staff(alice_api: KeyClient, staff_api: KeyClient, alice, settings) -> None:  # type: ignore[no-untyped-def]
    """Issue 11 item 3's rule beyond the health endpoints: a server path maps the machine for an attacker."""
    from django.test import Client

    path = str(settings.CACHE_ROOTS["default"])
    [root] = alice_api.get("/api/v1/cache").json()["roots"]
    assert "path" not in root and root["disk"]["free"] > 0
    assert staff_api.get("/api/v1/cache").json()["roots"][0]["path"] == path
    page = Client()
    page.force_login(alice)
    body = page.get("/cache/").content.decode()
    assert "Cache roots" in body and path not in body
