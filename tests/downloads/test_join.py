"""Issue 11 item 11: a pull joins the active job of the same (repo, revision, node) only when the asker may see
that job's repo. Another user asking for a private repo while its owner's pull runs is refused (409
`pull_in_progress`), and learns neither its commit nor its files. Real worker, real local Hub, two users."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from devkit.processes import wait_for
from models_app.models import ApiKey, DownloadJob
from models_app.services.credentials import create_credential
from tests.api.conftest import KeyClient, error_of
from tests.downloads.conftest import wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]

TOKEN = "hf_JoinTestToken0123456789abcdef"


def key_client(user: Any) -> KeyClient:
    return KeyClient(ApiKey.issue(user=user, name=f"{user.username}-join")[1])


def test_another_user_cannot_join_the_owners_pull_of_a_private_repo(hub, publish, alice, bob, staff) -> None:  # type: ignore[no-untyped-def]
    repo_id, sha = publish("join-private", private=True)
    hub.add_token(TOKEN, "alice", can_read=[repo_id])
    credential = create_credential(owner=alice, name="hub", token=TOKEN)
    hub.faults.throttle(100_000, pattern="model.safetensors")  # a few seconds: a running job to ask about

    created = key_client(alice).post(
        "/api/v1/pulls", {"repo_id": repo_id, "credential_id": credential.id}, content_type="application/json"
    )
    assert created.status_code == 201, created.json()
    job_id = created.json()["id"]
    wait_job(job_id, states=("running",))
    wait_for(
        lambda: DownloadJob.objects.get(id=job_id).commit_sha == sha, 30, "the job never resolved its commit"
    )

    # Bob, by the API and by the Pull page: refused, told why and what to do, shown nothing of the job.
    refused = key_client(bob).post("/api/v1/pulls", {"repo_id": repo_id}, content_type="application/json")
    body = refused.content.decode()
    assert refused.status_code == 409, body
    assert error_of(refused)["code"] == "pull_in_progress"
    assert sha not in body and "model.safetensors" not in body and '"id"' not in body
    bob_page = Client()
    bob_page.force_login(bob)
    page = bob_page.post("/pull/", {"repo": repo_id, "revision": "main", "action": "start"})
    assert page.status_code == 400 and "being downloaded for another user" in page.content.decode()
    assert sha not in page.content.decode()
    assert not DownloadJob.objects.filter(requested_by=bob).exists()

    # Staff may see every job: they join it.
    joined = key_client(staff).post("/api/v1/pulls", {"repo_id": repo_id}, content_type="application/json")
    assert joined.status_code == 200 and joined.json()["id"] == job_id

    assert wait_job(job_id).state == "succeeded"
    # Once it has ended, Bob's own pull runs on its own (and the Hub refuses him: he has no token).
    retried = key_client(bob).post("/api/v1/pulls", {"repo_id": repo_id}, content_type="application/json")
    assert retried.status_code == 201, retried.json()
    assert wait_job(retried.json()["id"]).error_code == "auth_required"


def test_anyone_joins_a_pull_without_a_token(hub, publish, alice, bob) -> None:  # type: ignore[no-untyped-def]
    """A job without a token fetches only what anyone could: joining it reveals nothing."""
    repo_id, _ = publish("join-public")
    hub.faults.throttle(100_000, pattern="model.safetensors")
    created = key_client(alice).post("/api/v1/pulls", {"repo_id": repo_id}, content_type="application/json")
    assert created.status_code == 201
    joined = key_client(bob).post("/api/v1/pulls", {"repo_id": repo_id}, content_type="application/json")
    assert joined.status_code == 200 and joined.json()["id"] == created.json()["id"]
    assert joined.json()["requested_by"] is None
    assert wait_job(created.json()["id"]).state == "succeeded"
