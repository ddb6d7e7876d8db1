"""/api/v1/pulls: pulling through the API with a real download worker from the local Hub, followed to the end
over the SSE stream, as a script would."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from models_app.models import DownloadJob
from tests.api.conftest import KeyClient, error_of

pytestmark = pytest.mark.django_db


def read_events(url: str, key: str, timeout: float = 60.0) -> list[tuple[str, dict[str, Any]]]:
    """Every `event:`/`data:` pair of an SSE stream, until the server closes it."""
    events = []
    with httpx.stream(
        "GET", url, headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name or "message", json.loads(line[6:])))
                name = None
    return events


@pytest.fixture
def tiny_repo(hub, tiny_model_path: Path) -> str:  # type: ignore[no-untyped-def]
    from devkit.tinymodel import tiny_model_files

    repo_id = f"test-api/tiny-{uuid.uuid4().hex[:8]}"
    hub.create_repo(repo_id, dict(tiny_model_files(tiny_model_path)))
    return repo_id


@pytest.mark.django_db(transaction=True)
def test_a_script_pulls_a_model_and_follows_it_to_the_end(
    asgi_server, download_worker, hub, tiny_repo: str, alice_key: str, bob_key: str
) -> None:  # type: ignore[no-untyped-def]
    hub.faults.throttle(60_000, "model.safetensors")  # ~3 s, so there is progress to see and a job to join
    api = httpx.Client(base_url=f"{asgi_server.url}/api/v1", headers={"Authorization": f"Bearer {alice_key}"})

    created = api.post("/pulls", json={"repo_id": tiny_repo})
    assert created.status_code == 201, created.json()
    job = created.json()
    assert job["repo_id"] == tiny_repo and job["state"] in ("queued", "running") and job["revision"] == "main"

    # A second pull of the same repo joins the active job, whoever asks.
    joined = httpx.post(
        f"{asgi_server.url}/api/v1/pulls",
        json={"repo_id": tiny_repo},
        headers={"Authorization": f"Bearer {bob_key}"},
    )
    assert joined.status_code == 200 and joined.json()["id"] == job["id"]
    assert joined.json()["requested_by"] is None  # bob learns the progress, not who asked

    events = read_events(f"{asgi_server.url}/api/v1/pulls/{job['id']}/events", alice_key)

    names = [name for name, _ in events]
    assert names[0] == "state" and names[-1] == "state"
    assert "progress" in names
    final = events[-1][1]
    assert final["state"] == "succeeded" and final["error"] is None
    assert final["bytes_done"] == final["bytes_total"] > 0 and final["percent"] == 100.0
    done = [data["bytes_done"] for name, data in events if name == "progress"]
    assert done == sorted(done)

    detail = api.get(f"/pulls/{job['id']}").json()
    assert detail["state"] == "succeeded" and detail["snapshot_id"]
    model = api.get(f"/models/{detail['snapshot_id']}").json()
    assert model["repo_id"] == tiny_repo and model["status"] == "ready"
    assert model["file_count"] == 7 and {f["path"] for f in model["files"]} >= {
        "config.json",
        "model.safetensors",
    }
    verified = api.post(f"/models/{detail['snapshot_id']}/verify").json()
    assert verified["ok"] is True and verified["files_checked"] == 7

    # A finished job's stream ends at once with its final state.
    assert [
        name for name, _ in read_events(f"{asgi_server.url}/api/v1/pulls/{job['id']}/events", alice_key)
    ] == ["state"]


def test_it_rejects_a_bad_repo_id_with_the_download_error_code(alice_api: KeyClient) -> None:
    for repo_id in ("not a repo", "../../etc", "a/b/c", "x" * 300):
        response = alice_api.post("/api/v1/pulls", {"repo_id": repo_id}, content_type="application/json")
        assert response.status_code == 400, repo_id
        error = error_of(response)
        assert error["code"] == "invalid_repo_id" and error["action"], error
    error = error_of(
        alice_api.post("/api/v1/pulls", {"repo_id": "org/ok..no"}, content_type="application/json")
    )
    assert error["code"] == "invalid_repo_id" and error["action"]
    bad_rev = alice_api.post(
        "/api/v1/pulls", {"repo_id": "org/name", "revision": "../x"}, content_type="application/json"
    )
    assert error_of(bad_rev)["code"] == "invalid_revision"
    assert DownloadJob.objects.count() == 0


def test_it_refuses_someone_elses_credential_and_unknown_cache_roots(alice_api: KeyClient, bob) -> None:  # type: ignore[no-untyped-def]
    from models_app.services.credentials import create_credential

    bobs = create_credential(owner=bob, name="bob", token="hf_" + "b" * 30)
    response = alice_api.post(
        "/api/v1/pulls", {"repo_id": "org/name", "credential_id": bobs.id}, content_type="application/json"
    )
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = alice_api.post(
        "/api/v1/pulls", {"repo_id": "org/name", "cache": "nope"}, content_type="application/json"
    )
    assert response.status_code == 400 and "cache" in error_of(response)["details"]
    response = alice_api.post(
        "/api/v1/pulls", {"repo_id": "org/name", "node": "nowhere"}, content_type="application/json"
    )
    assert response.status_code == 404
    error = error_of(response)
    assert (
        error["code"] == "unknown_node"
        and "No download worker is running on node 'nowhere'" in error["message"]
    )


def test_jobs_are_visible_to_their_requester_and_staff_only(
    alice_api: KeyClient, bob_api: KeyClient, staff_api: KeyClient, alice
) -> None:  # type: ignore[no-untyped-def]
    from models_app.models import Repository

    repo = Repository.objects.create(repo_id="org/failed-model")
    job = DownloadJob.objects.create(
        repository=repo,
        node="n",
        requested_by=alice,
        state="failed",
        error_code="not_found",
        error_message="gone",
    )

    assert [j["id"] for j in alice_api.get("/api/v1/pulls").json()["results"]] == [job.id]
    assert bob_api.get("/api/v1/pulls").json()["results"] == []
    assert bob_api.get(f"/api/v1/pulls/{job.id}").status_code == 404
    assert bob_api.get(f"/api/v1/pulls/{job.id}/events").status_code == 404
    assert bob_api.post(f"/api/v1/pulls/{job.id}/cancel").status_code == 404
    assert staff_api.get(f"/api/v1/pulls/{job.id}").status_code == 200

    detail = alice_api.get(f"/api/v1/pulls/{job.id}").json()
    assert detail["error"]["code"] == "not_found" and detail["error"]["message"] == "gone"
    assert "Check the repository id" in detail["error"]["action"]
    assert alice_api.get("/api/v1/pulls?state=failed").json()["count"] == 1
    assert alice_api.get("/api/v1/pulls?active=true").json()["count"] == 0
    assert alice_api.get("/api/v1/pulls?state=nope").status_code == 400
    # Cancelling a finished job changes nothing.
    cancelled = alice_api.post(f"/api/v1/pulls/{job.id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "failed"


def test_cancel_and_retry_a_queued_job(alice_api: KeyClient, alice, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from models_app.services import jobs

    monkeypatch.setattr(jobs, "enqueue_or_fail", lambda job_id: None)  # no worker: the job stays queued
    job = alice_api.post(
        "/api/v1/pulls", {"repo_id": "org/queued-model"}, content_type="application/json"
    ).json()
    assert job["state"] == "queued"

    cancelled = alice_api.post(f"/api/v1/pulls/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"

    retried = alice_api.post(f"/api/v1/pulls/{job['id']}/retry")
    assert (
        retried.status_code == 201
        and retried.json()["id"] != job["id"]
        and retried.json()["state"] == "queued"
    )


@pytest.mark.django_db(transaction=True)
def test_a_hub_url_is_taken_as_the_pull_page_takes_it(
    alice_api: KeyClient, hub, tiny_repo: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings

    from models_app.services import jobs

    monkeypatch.setattr(jobs, "enqueue_or_fail", lambda job_id: None)  # the request is the subject here
    sha = hub.head_sha(tiny_repo)
    hub.add_tag(tiny_repo, "v1", sha)

    tree = alice_api.post(
        "/api/v1/pulls",
        {"repo_id": f"{settings.HF_ENDPOINT}/{tiny_repo}/tree/v1"},
        content_type="application/json",
    )
    plain = alice_api.post(
        "/api/v1/pulls", {"repo_id": f"https://huggingface.co/{tiny_repo}"}, content_type="application/json"
    )

    assert tree.status_code == 201, tree.json()
    assert (tree.json()["repo_id"], tree.json()["revision"]) == (tiny_repo, "v1")
    assert plain.status_code == 201, plain.json()
    assert (plain.json()["repo_id"], plain.json()["revision"]) == (tiny_repo, "main")
    elsewhere = alice_api.post(
        "/api/v1/pulls", {"repo_id": f"https://example.com/{tiny_repo}"}, content_type="application/json"
    )
    assert elsewhere.status_code == 400 and error_of(elsewhere)["code"] == "invalid_repo_id"


@pytest.mark.django_db(transaction=True)
def test_allow_patterns_that_climb_or_match_nothing_are_a_400_with_the_file_list(
    alice_api: KeyClient, hub, tiny_repo: str
) -> None:  # type: ignore[no-untyped-def]
    climbing = alice_api.post(
        "/api/v1/pulls",
        {"repo_id": tiny_repo, "allow_patterns": ["../../x"]},
        content_type="application/json",
    )
    nothing = alice_api.post(
        "/api/v1/pulls", {"repo_id": tiny_repo, "allow_patterns": ["*.gguf"]}, content_type="application/json"
    )

    # Refused by the schema's own pattern (so a schema-valid pattern is never refused further on).
    assert climbing.status_code == 400 and error_of(climbing)["code"] == "invalid"
    assert "'..' is not allowed" in str(error_of(climbing))
    assert nothing.status_code == 400
    error = error_of(nothing)
    assert error["code"] == "invalid_request" and "'*.gguf'" in error["message"]
    assert "config.json" in error["message"] and "model.safetensors" in error["message"]
    assert not DownloadJob.objects.filter(repository__repo_id=tiny_repo).exists()


@pytest.mark.django_db(transaction=True)
def test_a_pull_without_credential_id_uses_the_default_token_and_names_it(
    alice_api: KeyClient, alice, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from models_app.services import jobs
    from models_app.services.credentials import create_credential

    monkeypatch.setattr(jobs, "enqueue_or_fail", lambda job_id: None)  # the request is the subject here
    first = create_credential(owner=alice, name="first", token="hf_" + "a" * 26 + "1111")
    second = create_credential(owner=alice, name="second", token="hf_" + "a" * 26 + "2222")
    listed = {c["name"]: c["is_default"] for c in alice_api.get("/api/v1/credentials").json()["results"]}
    assert listed == {"first": True, "second": False}

    made = alice_api.post(f"/api/v1/credentials/{second.id}/default")
    assert made.status_code == 200 and made.json()["is_default"] is True
    job = alice_api.post(
        "/api/v1/pulls", {"repo_id": "org/with-default"}, content_type="application/json"
    ).json()

    assert job["credential_id"] == second.id and job["credential"] == "“second” (hf_****2222)"
    first.refresh_from_db()
    assert not first.is_default
    assert alice_api.delete(f"/api/v1/credentials/{second.id}/default").json()["is_default"] is False
    job = alice_api.post(
        "/api/v1/pulls", {"repo_id": "org/no-default"}, content_type="application/json"
    ).json()
    assert job["credential_id"] is None and job["credential"] is None
