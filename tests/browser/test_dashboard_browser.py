"""The dashboard end to end, in headless Chromium against the real stack (uvicorn, a Celery download worker,
an inference worker, Redis, the local Hub): log in, preview and pull a model, watch its progress bar fill and
the job turn ready without reloading, chat with it, delete it. Screenshots of every page go to
docs/screenshots/ (1280x800, plus the models page at phone width)."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from huggingface_hub.file_download import repo_folder_name

from models_app.models import ApiKey, DownloadJob, Snapshot, Usage
from tests.browser.helpers import PHONE, login, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REPO_ID = "demo-org/tiny-chat-4bit"
DOWNLOAD_SECONDS = 2.5
HUB_TOKEN = "hf_demoTokenForScreenshots0042"


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    """A bigger tiny model (~20 MB of weights): progress is reported per 256 KiB chunk, so the default tiny
    model (under 200 KB) would jump from 0 to 100 % in one step."""
    from devkit.tinymodel import tiny_model_dir

    root = Path(__file__).resolve().parents[2] / "var" / "test" / "models"
    return tiny_model_dir(root, hidden_size=256, num_layers=8, max_position_embeddings=8192)


@pytest.fixture
def published(hub, demo_model_path: Path) -> str:
    """The demo model on the local Hub, absent from the cache (the cache outlives test sessions)."""
    from devkit.tinymodel import tiny_model_files

    files = tiny_model_files(demo_model_path)
    hub.delete_repo(REPO_ID)
    hub.create_repo(REPO_ID, files)
    shutil.rmtree(Path(settings.HF_HUB_CACHE) / repo_folder_name(repo_id=REPO_ID, repo_type="model"), True)
    # Slow the weights down so the download lasts a few seconds and the progress bar can be watched.
    weights = files["model.safetensors"].stat().st_size
    hub.faults.throttle(weights / DOWNLOAD_SECONDS, pattern="*.safetensors")
    hub.add_token(HUB_TOKEN, "root")
    return REPO_ID


def seed_history(user: Any, snapshot: Snapshot) -> None:
    """Two weeks of usage (so the charts have something to draw), a Hub token and an API key."""
    from models_app.services.credentials import check_credential, create_credential

    now = timezone.now()
    key, _raw = ApiKey.issue(user=user, name="laptop")
    rows = []
    for day in range(14):
        for n in range(1 + day % 4):
            api = (day + n) % 3 == 0
            rows.append(
                Usage(
                    user=None if api else user,
                    api_key=key if api else None,
                    snapshot=snapshot,
                    source="api" if api else "browser",
                    prompt_tokens=40 + 13 * n + day,
                    completion_tokens=120 + 37 * ((day * 7 + n) % 5),
                    ttft_ms=35 + (day * 11) % 25,
                    tokens_per_second=210 + (day * 17) % 60,
                )
            )
    Usage.objects.bulk_create(rows)
    for i, row in enumerate(Usage.objects.filter(snapshot=snapshot).order_by("id")):
        Usage.objects.filter(id=row.id).update(created_at=now - timedelta(days=13 - i % 14, hours=i % 5))
    check_credential(create_credential(owner=user, name="personal", token=HUB_TOKEN))


def chat_once(page: Any) -> str:
    """Send one message on the chat page (the chat engineer's) and wait for the streamed answer to end."""
    # Random weights rarely say stop: a short answer keeps the test quick.
    page.get_by_label("Max tokens").fill("40")
    page.get_by_label("Message", exact=True).fill("Hello! How are you today?")
    page.locator("#send").click()
    page.wait_for_function(
        """() => { const m = [...document.querySelectorAll("article.msg.assistant")].pop();
                   return m && m.dataset.status === "complete"
                          && m.querySelector(".msg-body").innerText.trim().length > 0; }""",
        timeout=90_000,
    )
    return page.locator("article.msg.assistant .msg-body").last.inner_text()


def test_pull_watch_chat_delete(
    browser, staff, published, asgi_server, download_worker, inference_worker
) -> None:
    page = new_page(browser, asgi_server.url)
    login(page, "root", "root-password")

    # Pull: preview first (plan), then start.
    page.goto("/pull/")
    page.get_by_label("Repository").fill(published)
    page.get_by_role("button", name="Preview").click()
    plan = page.locator("[data-testid=plan]")
    plan.wait_for()
    assert "model.safetensors" in plan.inner_text()
    assert page.locator("[data-testid=memory]").get_attribute("data-level") == "green"
    screenshot(page, "pull")
    page.get_by_role("button", name="Start download").click()

    # Downloads: the bar fills and the job turns ready over the websocket, without a reload.
    page.wait_for_url(re.compile(r"/downloads/\?job=\d+"))
    job_id = int(re.search(r"job=(\d+)", page.url).group(1))  # type: ignore[union-attr]
    page.evaluate("window.__sameDocument = true")
    card = page.locator(f"#job-{job_id}")
    page.wait_for_function(
        f"""() => {{ const bar = document.querySelector('#job-{job_id} [data-f=bar]');
                    const w = parseFloat(bar && bar.style.width); return w > 30 && w < 90; }}""",
        timeout=30_000,
    )
    assert card.get_attribute("data-state") == "running"
    assert "of" in card.locator("[data-f=bytes]").inner_text()
    screenshot(page, "downloads")
    page.wait_for_selector(f"#job-{job_id}[data-state=succeeded]", timeout=60_000)
    assert card.locator("[data-f=state]").inner_text() == "Succeeded"
    assert card.locator("[data-f=bar]").evaluate("el => el.style.width") == "100%"
    assert page.evaluate("window.__sameDocument") is True  # no reload happened

    snapshot = DownloadJob.objects.select_related("snapshot__repository").get(id=job_id).snapshot
    assert snapshot.status == Snapshot.Status.READY
    seed_history(staff, snapshot)

    # The model page, then chat from it.
    card.get_by_role("link", name="Open model").click()
    page.wait_for_url(f"**/models/{snapshot.id}/")
    assert page.locator("[data-testid=status]").inner_text() == "Ready"
    page.locator("[data-testid=chat]").click()
    page.wait_for_url(re.compile(r"/chat/"))
    assert chat_once(page).strip()

    page.goto(f"/models/{snapshot.id}/")
    # The inference worker reports what it holds with its heartbeat (every few seconds).
    for _ in range(30):
        if "in memory" in page.locator("[data-testid=inference]").inner_text():
            break
        page.wait_for_timeout(500)
        page.reload()
    screenshot(page, "model")
    page.goto("/")
    page.locator("[data-ws-status]").get_by_text("Live").wait_for()
    screenshot(page, "overview")
    page.goto("/models/")
    screenshot(page, "models")
    page.goto("/cache/")
    screenshot(page, "cache")
    page.goto("/usage/")
    screenshot(page, "usage")
    page.goto("/settings/")
    assert "hf_****0042" in page.content() and HUB_TOKEN not in page.content()
    screenshot(page, "settings")
    page.goto("/health/")
    screenshot(page, "health")

    phone = new_page(browser, asgi_server.url, viewport=PHONE)
    login(phone, "root", "root-password")
    phone.goto("/models/")
    screenshot(phone, "models-phone")
    phone.context.close()

    # Delete: the confirmation says what it frees. The chat just used the model, and deletion refuses a
    # model that may still be loaded for the keep-alive period: let that time pass.
    Snapshot.objects.filter(id=snapshot.id).update(last_used_at=timezone.now() - timedelta(hours=1))
    page.goto(f"/models/{snapshot.id}/")
    page.get_by_role("link", name="Delete…").click()
    assert "This frees" in page.locator("[data-testid=frees]").inner_text()
    page.get_by_role("button", name=re.compile(r"^Delete ")).click()
    page.wait_for_url("**/models/")
    assert f"Deleted {published}" in page.content()
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.DELETED
    page.context.close()
