"""The downloads admin: pages render, actions go through the services, a token is write-only."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from models_app.models import DownloadJob, HubCredential, Repository, Snapshot
from models_app.services import credentials

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "hf_AdminToken999888777666555"


@pytest.fixture
def staff_client(client, staff):  # type: ignore[no-untyped-def]
    client.force_login(staff)
    return client


@pytest.fixture
def rows(alice):  # type: ignore[no-untyped-def]
    repo = Repository.objects.create(repo_id="test-dl/admin-model", private=True, owner=alice)
    snapshot = Snapshot.objects.create(
        repository=repo, commit_sha="a" * 40, node="n", status="ready", size_bytes=1_234_567, files=[]
    )
    job = DownloadJob.objects.create(
        repository=repo,
        node="n",
        state="failed",
        error_code="network",
        bytes_done=500,
        bytes_total=1000,
        commit_sha="b" * 40,
        finished_at=timezone.now(),
    )
    credential = credentials.create_credential(owner=alice, name="hub", token=TOKEN)
    return repo, snapshot, job, credential


def test_every_page_renders_and_no_token_or_ciphertext_is_shown(staff_client, rows) -> None:
    repo, snapshot, job, credential = rows
    pages = [
        reverse("admin:models_app_repository_changelist"),
        reverse("admin:models_app_repository_change", args=[repo.id]),
        reverse("admin:models_app_snapshot_changelist"),
        reverse("admin:models_app_snapshot_change", args=[snapshot.id]),
        reverse("admin:models_app_downloadjob_changelist"),
        reverse("admin:models_app_downloadjob_change", args=[job.id]),
        reverse("admin:models_app_hubcredential_changelist"),
        reverse("admin:models_app_hubcredential_change", args=[credential.id]),
        reverse("admin:models_app_hubcredential_add"),
    ]
    for url in pages:
        response = staff_client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert TOKEN not in body and credential.token_ciphertext not in body, url
    changelist = staff_client.get(reverse("admin:models_app_snapshot_changelist")).content.decode()
    assert "1.2 MB" in changelist and "aaaaaaaa" in changelist
    jobs_page = staff_client.get(reverse("admin:models_app_downloadjob_changelist")).content.decode()
    assert "500 B / 1.0 kB (50%)" in jobs_page
    credential_page = staff_client.get(reverse("admin:models_app_hubcredential_changelist")).content.decode()
    assert f"hf_****{TOKEN[-4:]}" in credential_page


def test_adding_a_credential_encrypts_the_token(staff_client, alice) -> None:
    response = staff_client.post(
        reverse("admin:models_app_hubcredential_add"),
        {"owner": alice.id, "name": "from-admin", "token": TOKEN},
    )
    assert response.status_code == 302
    credential = HubCredential.objects.get(name="from-admin")
    assert credential.owner == alice and credential.token_last4 == TOKEN[-4:]
    assert TOKEN not in credential.token_ciphertext
    assert credentials.credential_token(credential) == TOKEN

    refused = staff_client.post(
        reverse("admin:models_app_hubcredential_add"), {"owner": alice.id, "name": "empty", "token": ""}
    )
    assert refused.status_code == 200 and not HubCredential.objects.filter(name="empty").exists()


def test_changing_a_credential_keeps_or_replaces_the_token(staff_client, rows) -> None:
    *_, credential = rows
    url = reverse("admin:models_app_hubcredential_change", args=[credential.id])
    assert staff_client.post(url, {"name": "renamed", "token": ""}).status_code == 302
    credential.refresh_from_db()
    assert credential.name == "renamed" and credentials.credential_token(credential) == TOKEN

    assert staff_client.post(url, {"name": "renamed", "token": "hf_NewToken00000000001"}).status_code == 302
    credential.refresh_from_db()
    assert credentials.credential_token(credential) == "hf_NewToken00000000001"


def test_job_actions_call_the_services(staff_client, rows, private_queue) -> None:
    repo, _, failed, _ = rows
    url = reverse("admin:models_app_downloadjob_changelist")

    staff_client.post(url, {"action": "requeue", "_selected_action": [failed.id]})
    queued = DownloadJob.objects.exclude(id=failed.id).get(repository=repo)
    assert queued.state == "queued"

    staff_client.post(url, {"action": "cancel", "_selected_action": [queued.id]})
    queued.refresh_from_db()
    assert queued.state == "cancelled"


def test_the_verify_action_reports_missing_files(staff_client, rows) -> None:
    _, snapshot, _, _ = rows
    response = staff_client.post(
        reverse("admin:models_app_snapshot_changelist"),
        {"action": "verify", "_selected_action": [snapshot.id]},
        follow=True,
    )
    assert response.status_code == 200
    snapshot.refresh_from_db()
    assert snapshot.status != "ready"  # its directory does not exist
