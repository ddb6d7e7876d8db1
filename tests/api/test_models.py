"""/api/v1/models: snapshots as the key's user may see them; delete, verify, load and unload."""

from __future__ import annotations

import pytest

from devkit.processes import wait_for
from models_app.models import Snapshot
from models_app.services import inference
from tests.api.conftest import KeyClient, error_of

pytestmark = pytest.mark.django_db


def test_it_lists_visible_snapshots_with_filters(alice_api: KeyClient, make_snapshot, alice, bob) -> None:  # type: ignore[no-untyped-def]
    public = make_snapshot("org/public-model", model_type="llama")
    mine = make_snapshot("alice/private-model", private=True, owner=alice)
    make_snapshot("bob/private-model", private=True, owner=bob)
    broken = make_snapshot("org/broken-model", status=Snapshot.Status.INVALID)
    make_snapshot("org/gone-model", status=Snapshot.Status.DELETED)

    listed = alice_api.get("/api/v1/models").json()
    assert listed["count"] == 3
    assert [m["repo_id"] for m in listed["results"]] == [
        "alice/private-model",
        "org/broken-model",
        "org/public-model",
    ]
    assert {"files", "path"}.isdisjoint(listed["results"][0])  # lists stay small; no server paths

    def ids(query: str) -> list[int]:
        return [m["id"] for m in alice_api.get(f"/api/v1/models?{query}").json()["results"]]

    assert ids("repo=org/public-model") == [public.id]
    assert ids("status=invalid") == [broken.id]
    assert sorted(ids("status=ready&status=invalid")) == sorted([public.id, mine.id, broken.id])
    assert ids("q=PRIVATE") == [mine.id]  # bob's private repo stays invisible to a search
    assert ids("q=llama") == [public.id]
    assert ids("limit=1&offset=1") == [broken.id]

    response = alice_api.get("/api/v1/models?status=bogus")
    assert response.status_code == 400 and "status" in error_of(response)["details"]
    assert error_of(alice_api.get("/api/v1/models?limit=abc"))["code"] == "invalid"


def test_detail_and_visibility(alice_api: KeyClient, bob_api: KeyClient, make_snapshot, alice) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot(
        "alice/secret", private=True, owner=alice, files=[{"path": "config.json", "size": 2, "blob_id": "x"}]
    )

    detail = alice_api.get(f"/api/v1/models/{snapshot.id}").json()
    assert detail["repo_id"] == "alice/secret" and detail["private"] is True
    assert detail["files"] == [{"path": "config.json", "size": 2, "sha256": None}]

    response = bob_api.get(f"/api/v1/models/{snapshot.id}")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert error_of(bob_api.get("/api/v1/models/x1"))["code"] == "invalid_id"


def test_only_staff_or_the_puller_may_delete(
    alice_api: KeyClient, staff_api: KeyClient, make_snapshot
) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("org/shared")

    refused = alice_api.delete(f"/api/v1/models/{snapshot.id}")
    assert refused.status_code == 403 and error_of(refused)["code"] == "forbidden"

    preview = staff_api.delete(f"/api/v1/models/{snapshot.id}?dry_run=true")
    assert preview.status_code == 200 and preview.json()["dry_run"] is True
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.READY

    done = staff_api.delete(f"/api/v1/models/{snapshot.id}")
    assert done.status_code == 200, done.json()
    assert [i["snapshot_id"] for i in done.json()["items"]] == [snapshot.id]
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.DELETED
    assert staff_api.delete(f"/api/v1/models/{snapshot.id}").status_code == 404


def test_verify_reports_missing_files(alice_api: KeyClient, make_snapshot) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("org/vanished", files=[{"path": "config.json", "size": 2, "blob_id": "x"}])
    result = alice_api.post(f"/api/v1/models/{snapshot.id}/verify").json()
    assert result["ok"] is False and result["status"] == "missing" and result["missing"] == ["config.json"]
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.MISSING


@pytest.mark.django_db(transaction=True)
def test_load_and_unload_go_through_the_inference_worker(
    alice_api: KeyClient, tiny_snapshot, inference_worker
) -> None:  # type: ignore[no-untyped-def]
    response = alice_api.post(f"/api/v1/models/{tiny_snapshot.id}/load")
    assert response.status_code == 202 and response.json()["queued"] is True
    wait_for(lambda: tiny_snapshot.id in inference.loaded_models(), 20, "the model was not loaded")

    assert alice_api.post(f"/api/v1/models/{tiny_snapshot.id}/unload").status_code == 202
    wait_for(lambda: tiny_snapshot.id not in inference.loaded_models(), 20, "the model was not unloaded")


def test_load_without_an_inference_worker_is_a_503(alice_api: KeyClient, make_snapshot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from models_app.services import workers

    monkeypatch.setattr(workers, "workers_for_queue", lambda queue: [])
    response = alice_api.post(f"/api/v1/models/{make_snapshot().id}/load")
    assert response.status_code == 503 and error_of(response)["code"] == "inference_unavailable"
