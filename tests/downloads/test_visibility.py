"""Issue 11 item 4: a repo is public here only once the Hub has shown it to an anonymous caller. A repo first
seen through a token, or through a pull that failed, is private to its requester; imported files of a repo of
unknown visibility are for staff only; the update check's anonymous look makes them public. Real worker, real
local Hub, real huggingface_hub download by "another tool", two users and staff."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from models_app.models import ApiKey, DownloadJob, Repository
from models_app.services import hub as hub_service
from models_app.services.credentials import create_credential
from models_app.services.reconcile import reconcile_cache
from models_app.services.updates import check_updates
from tests.api.conftest import KeyClient
from tests.downloads.conftest import wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]

TOKEN = "hf_VisibilityToken0123456789abcd"


def sees(user: Any, repo_id: str) -> bool:
    """Whether `user` finds repo_id among the models the REST API lists for them."""
    client = KeyClient(ApiKey.issue(user=user, name=f"look-{ApiKey.objects.count()}")[1])
    listed = client.get("/api/v1/models", {"q": repo_id}).json()
    return any(m["repo_id"] == repo_id for m in listed["results"])


def download_by_another_tool(hub: Any, repo_id: str, token: str | None = TOKEN) -> None:
    """What `hf download` does: the files land in the shared cache without this app."""
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id, cache_dir=settings.CACHE_ROOTS["default"], token=token or False, endpoint=hub.url
    )


def test_a_failed_pull_then_files_from_another_tool_stay_private_to_the_requester(  # type: ignore[no-untyped-def]
    hub, publish, alice, bob, staff
) -> None:
    repo_id, _ = publish("vis-failed", private=True)
    hub.add_token(TOKEN, "alice", can_read=[repo_id])

    failed = wait_job(hub_service.download_model(repo_id, user=alice))
    assert failed.error_code == "auth_required"
    download_by_another_tool(hub, repo_id)
    report = reconcile_cache()
    assert any(label.startswith(repo_id) for label in report.imported), report

    assert not sees(bob, repo_id)  # the issue: everyone saw it, chattable
    assert sees(alice, repo_id)  # she asked for it: private to her
    assert sees(staff, repo_id)


def test_a_public_answer_through_a_token_is_not_proof_until_an_anonymous_check(  # type: ignore[no-untyped-def]
    hub, publish, alice, bob
) -> None:
    repo_id, _ = publish("vis-token", private=True)
    hub.add_token(TOKEN, "alice", can_read=[repo_id])
    hub.update_info(repo_id, private=False)  # what the token holder is told; anonymous callers get a 401
    credential = create_credential(owner=alice, name="hub", token=TOKEN)

    job = wait_job(hub_service.download_model(repo_id, credential=credential, user=alice))
    assert job.state == "succeeded", job.error_message
    repo = Repository.objects.get(repo_id=repo_id)
    assert (repo.private, repo.owner) == (True, alice)
    assert sees(alice, repo_id) and not sees(bob, repo_id)

    # The update check (with Alice's token) finds it still hidden from anonymous callers: still private.
    check_updates(repo_ids=[repo_id])
    assert not sees(bob, repo_id)
    # Made public on the Hub: the next check's anonymous look proves it.
    hub.set_private(repo_id, False)
    check_updates(repo_ids=[repo_id])
    assert sees(bob, repo_id)


def test_a_public_repo_pulled_with_a_token_is_public_at_once(hub, publish, alice, bob) -> None:  # type: ignore[no-untyped-def]
    repo_id, _ = publish("vis-public")
    hub.add_token(TOKEN, "alice")
    credential = create_credential(owner=alice, name="hub", token=TOKEN)
    job = wait_job(hub_service.download_model(repo_id, credential=credential, user=alice))
    assert job.state == "succeeded", job.error_message
    assert sees(bob, repo_id)


def test_imported_files_of_a_repo_of_unknown_visibility_are_staff_only_until_checked(  # type: ignore[no-untyped-def]
    hub, publish, alice, bob, staff
) -> None:
    """A row an older version left public after a failed pull: the import does not trust it."""
    repo_id, _ = publish("vis-legacy")
    repo = Repository.objects.create(repo_id=repo_id)  # private=False, never read from the Hub
    DownloadJob.objects.create(
        repository=repo, node=settings.NODE_NAME, state="failed", error_code="network", requested_by=alice
    )
    download_by_another_tool(hub, repo_id, token=None)
    reconcile_cache()
    assert not sees(bob, repo_id) and not sees(alice, repo_id)
    assert sees(staff, repo_id)

    check_updates(repo_ids=[repo_id])  # anonymous: the Hub shows it to anyone
    assert sees(bob, repo_id)


def test_a_failed_pull_does_not_keep_a_private_repo_from_the_user_whose_token_reads_it(  # type: ignore[no-untyped-def]
    hub, publish, alice, bob
) -> None:
    repo_id, _ = publish("vis-handover", private=True)
    hub.add_token(TOKEN, "bob", can_read=[repo_id])
    assert wait_job(hub_service.download_model(repo_id, user=alice)).error_code == "auth_required"
    credential = create_credential(owner=bob, name="hub", token=TOKEN)
    job = wait_job(hub_service.download_model(repo_id, credential=credential, user=bob))
    assert job.state == "succeeded", job.error_message
    assert sees(bob, repo_id) and not sees(alice, repo_id)
