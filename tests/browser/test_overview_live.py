"""The overview's "Active downloads" card is live: a download started elsewhere (another tab, the API, the
shell) appears and moves without a reload."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from models_app.models import DownloadJob, Repository
from models_app.realtime import user_downloads_group
from tests.browser.helpers import login, new_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_download_started_after_the_page_loaded_appears_and_moves(
    browser, asgi_server, alice, settings
) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser, asgi_server.url)
    login(page, "alice", "alice-password")
    page.goto("/")
    page.locator("[data-downloads-live] [data-ws-status]").get_by_text("Live").wait_for()

    repo = Repository.objects.create(repo_id="alice/started-elsewhere")
    job = DownloadJob.objects.create(
        repository=repo, revision="main", node=settings.NODE_NAME, requested_by=alice, state="running"
    )
    progress = {
        "type": "download.progress",
        "job_id": job.id,
        "repo_id": repo.repo_id,
        "revision": "main",
        "state": "running",
        "bytes_done": 250,
        "bytes_total": 1000,
        "files_done": 1,
        "files_total": 4,
        "current_file": "model.safetensors",
        "speed_bps": 100.0,
        "eta_seconds": 7.5,
        "percent": 25.0,
    }
    # Playwright's sync API keeps an event loop in this thread: publish from another one, as a worker would.
    sender = threading.Thread(
        target=async_to_sync(get_channel_layer().group_send), args=(user_downloads_group(alice.id), progress)
    )
    sender.start()
    sender.join(10)

    card = page.locator(f"[data-downloads-live] [data-job-id='{job.id}']")
    card.wait_for()
    assert "alice/started-elsewhere" in card.inner_text()
    page.wait_for_function(
        f"() => document.querySelector(\"[data-job-id='{job.id}'] [data-f=bar]\").style.width === '25%'"
    )
    assert page.locator("[data-downloads-live] [data-empty]").is_hidden()
