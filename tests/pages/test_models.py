"""The models list (search, sort, filter, pagination) and a model's actions: verify, update, delete (with a
confirmation page that says what it frees), load/unload."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from models_app.models import DownloadJob, Repository, Snapshot
from tests.factories import make_job, make_snapshot


def test_search_filter_and_sort(alice_client, alice) -> None:
    make_snapshot("org/alpha", owner=alice, size=10)
    make_snapshot("org/beta", owner=alice, size=30, status=Snapshot.Status.INVALID)
    gamma = make_snapshot("org/gamma", owner=alice, size=20)
    Repository.objects.filter(id=gamma.repository_id).update(update_available=True)

    html = alice_client.get("/models/?q=alp").content.decode()
    assert "org/alpha" in html and "org/beta" not in html
    html = alice_client.get("/models/?status=invalid").content.decode()
    assert "org/beta" in html and "org/alpha" not in html
    html = alice_client.get("/models/?updates=on").content.decode()
    assert "org/gamma" in html and "org/alpha" not in html and "update available" in html
    html = alice_client.get("/models/?sort=size").content.decode()
    assert html.index("org/beta") < html.index("org/gamma") < html.index("org/alpha")


def test_the_list_is_paginated(alice_client, alice) -> None:
    for i in range(60):
        make_snapshot(f"org/m{i:03d}", owner=alice)
    html = alice_client.get("/models/").content.decode()
    assert "Page 1 of 2" in html and "org/m049" in html and "org/m050" not in html
    assert "org/m050" in alice_client.get("/models/?page=2").content.decode()


def test_each_row_shows_status_size_sha_and_a_chat_link(alice_client, alice) -> None:
    snap = make_snapshot("org/row-model", owner=alice, private=True, size=2_500_000)
    html = alice_client.get("/models/").content.decode()
    assert snap.short_sha in html and "badge ready" in html and "badge private" in html
    assert f'href="/chat/?model={snap.id}"' in html
    assert "2.4\xa0MB" in html


def test_model_page_shows_files_revisions_and_usage(alice_client, alice) -> None:
    from models_app.models import Usage

    snap = make_snapshot("org/detail", owner=alice)
    make_snapshot("org/detail", owner=alice, ref="v2")
    Usage.objects.create(user=alice, snapshot=snap, source="browser", prompt_tokens=3, completion_tokens=4)
    html = alice_client.get(f"/models/{snap.id}/").content.decode()
    assert "model.safetensors" in html and snap.commit_sha in html
    assert "Revisions" in html and "v2" in html
    assert 'data-chart="bars"' in html and "usage-data" in html
    assert "Load into memory" in html


def test_delete_asks_first_and_says_what_it_frees(alice_client, alice) -> None:
    snap = make_snapshot("org/to-delete", owner=alice)
    confirm = alice_client.get(f"/models/{snap.id}/delete/")
    assert confirm.status_code == 200
    assert 'data-testid="frees"' in confirm.content.decode()
    snap.refresh_from_db()
    assert snap.status == Snapshot.Status.READY  # looking is not deleting
    response = alice_client.post(f"/models/{snap.id}/delete/")
    assert response.status_code == 302 and response["Location"] == "/models/"
    snap.refresh_from_db()
    assert snap.status == Snapshot.Status.DELETED


def test_delete_refuses_a_model_in_use(alice_client, alice) -> None:
    snap = make_snapshot("org/busy", owner=alice, last_used_at=timezone.now() - timedelta(seconds=5))
    response = alice_client.post(f"/models/{snap.id}/delete/", follow=True)
    assert "may still be loaded" in response.content.decode()
    snap.refresh_from_db()
    assert snap.status == Snapshot.Status.READY


def test_only_the_owner_or_staff_may_delete(client, alice, bob) -> None:
    snap = make_snapshot("org/alices-public", owner=alice)
    client.force_login(bob)
    response = client.post(f"/models/{snap.id}/delete/", follow=True)
    assert "Only staff or the user who pulled" in response.content.decode()
    snap.refresh_from_db()
    assert snap.status == Snapshot.Status.READY


def test_update_pulls_the_same_revision_again(alice_client, alice) -> None:
    snap = make_snapshot("org/updatable", owner=alice, ref="main")
    response = alice_client.post(f"/models/{snap.id}/update/")
    job = DownloadJob.objects.get(repository=snap.repository, revision="main")
    assert response.status_code == 302 and response["Location"].startswith(f"/downloads/?job={job.id}")
    assert job.requested_by == alice


def test_verify_reports_missing_files(alice_client, alice) -> None:
    snap = make_snapshot("org/not-on-disk", owner=alice, commit_sha="a" * 40)
    response = alice_client.post(f"/models/{snap.id}/verify/", follow=True)
    html = response.content.decode()
    assert "Verification failed" in html
    assert 'data-testid="status">Files missing' in html


def test_load_without_an_inference_worker_says_so(alice_client, alice) -> None:
    snap = make_snapshot("org/loadable", owner=alice)
    response = alice_client.post(f"/models/{snap.id}/load/", follow=True)
    assert "No inference worker is running" in response.content.decode()


def test_downloads_cancel_and_retry(alice_client, alice) -> None:
    snap = make_snapshot("org/dl", owner=alice, status=Snapshot.Status.DOWNLOADING)
    job = make_job(snap, user=alice, state=DownloadJob.State.QUEUED, revision="main")
    html = alice_client.get("/downloads/").content.decode()
    assert f'data-job-id="{job.id}"' in html and 'role="progressbar"' in html
    alice_client.post(f"/downloads/{job.id}/cancel/")
    job.refresh_from_db()
    assert job.state == DownloadJob.State.CANCELLED
    response = alice_client.post(f"/downloads/{job.id}/retry/")
    new = DownloadJob.objects.exclude(id=job.id).get(repository=snap.repository)
    assert new.state == DownloadJob.State.QUEUED
    assert response["Location"].startswith(f"/downloads/?job={new.id}")


def test_a_failed_download_shows_its_error_and_what_to_do(alice_client, alice) -> None:
    snap = make_snapshot("org/failing", owner=alice)
    make_job(
        snap,
        user=alice,
        state=DownloadJob.State.FAILED,
        error_code="auth_required",
        error_message="org/failing was not found or is private: a Hub token is needed.",
    )
    html = alice_client.get("/downloads/").content.decode()
    assert "a Hub token is needed" in html
    assert 'href="/settings/#credentials"' in html
