"""Discover in headless Chromium against the real stack (uvicorn, a Celery download worker, Redis, the local
Hub): search, see variants side by side with their verdicts, hide what does not fit, open a pull plan from a
result, pull it, and find it marked "here" in the next search."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from huggingface_hub.file_download import repo_folder_name

from tests.browser.helpers import login, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_search_filter_open_plan_pull_and_see_it_here(
    browser, staff, hub, tiny_model_path: Path, asgi_server, download_worker
) -> None:
    from devkit.tinymodel import tiny_model_dir, tiny_model_files

    word = f"find{uuid.uuid4().hex[:8]}"
    q4, full, huge = (
        f"mlx-demo/Qwen{word}-7B-4bit",
        f"mlx-demo/Qwen{word}-7B-bf16",
        f"mlx-demo/Big{word}-4bit",
    )
    hub.create_repo(
        q4,
        tiny_model_files(tiny_model_dir(tiny_model_path.parent, quantize=True)),
        info={"downloads": 120, "likes": 4, "cardData": {"base_model": f"Qwen/Qwen{word}-7B"}},
    )
    hub.create_repo(full, tiny_model_files(tiny_model_path), info={"downloads": 80})
    # A listing that claims 20 TB of weights: no disk here takes it, so its verdict is red.
    hub.create_repo(
        huge,
        tiny_model_files(tiny_model_path),
        info={"downloads": 5, "safetensors": {"parameters": {"BF16": 10**13}, "total": 10**13}},
    )
    cached = Path(settings.HF_HUB_CACHE) / repo_folder_name(repo_id=q4, repo_type="model")
    try:
        page = new_page(browser, asgi_server.url)
        login(page, "root", "root-password")
        page.get_by_role("link", name="Discover").click()
        page.wait_for_url("**/discover/")
        page.get_by_role("searchbox", name="Search").fill(word)
        page.get_by_role("button", name="Search").click()
        page.locator("[data-testid=discover-results]").wait_for()

        groups = page.locator("[data-testid=discover-group]")
        assert groups.count() == 2  # the Qwen family (4-bit and bf16 side by side) and the big one
        family = groups.filter(has_text=q4)
        rows = family.locator("[data-testid=discover-result]")
        assert [rows.nth(i).get_attribute("data-repo") for i in range(rows.count())] == [q4, full]
        assert "4-bit" in family.inner_text() and "bf16" in family.inner_text()
        verdicts = {
            row.get_attribute("data-repo"): row.get_attribute("data-verdict")
            for row in page.locator("[data-testid=discover-result]").all()
        }
        assert verdicts == {q4: "green", full: "green", huge: "red"}
        screenshot(page, "discover")

        # Only what fits: the red one (and its now empty family) disappears, the others stay.
        page.get_by_label("Only what fits here").check()
        assert page.locator(f"[data-repo='{huge}']").is_hidden()
        assert page.locator(f"[data-repo='{q4}']").is_visible()

        # One click: the pull plan of that repo, then the pull itself.
        page.locator(f"[data-repo='{q4}'] [data-testid=plan-link]").click()
        page.locator("[data-testid=plan]").wait_for()
        assert q4 in page.locator("[data-testid=plan]").inner_text()
        assert page.locator("[data-testid=memory]").get_attribute("data-level") == "green"
        page.get_by_role("button", name="Start download").click()
        page.wait_for_url(re.compile(r"/downloads/\?job=\d+"))
        job_id = int(re.search(r"job=(\d+)", page.url).group(1))  # type: ignore[union-attr]
        page.wait_for_selector(f"#job-{job_id}[data-state=succeeded]", timeout=90_000)

        # The same search again (the Hub's answer now from the cache): the pulled one is marked here.
        page.goto(f"/discover/?q={word}&mlx=1")
        assert page.locator(f"[data-repo='{q4}'] [data-testid=here]").is_visible()
        assert page.locator(f"[data-repo='{full}'] [data-testid=here]").count() == 0
    finally:
        shutil.rmtree(cached, ignore_errors=True)


def test_results_fill_in_as_each_is_checked_a_bounded_few_at_a_time_and_more_results_page_on(
    browser, staff, hub, tiny_model_path: Path, stack_env, process_log_dir
) -> None:
    """The listing shows at once; the rows it left without sizes say "checking…" and fill in as each answer
    arrives (one at a time here: DISCOVER_DETAILS_CONCURRENCY=1), while the Hub holds the first one back; then
    "More results" brings the next page (DISCOVER_MAX_RESULTS=3)."""
    from devkit.processes import AsgiServer
    from devkit.tinymodel import tiny_model_dir, tiny_model_files

    word = f"fill{uuid.uuid4().hex[:8]}"
    quantized = tiny_model_files(tiny_model_dir(tiny_model_path.parent, quantize=True))
    sized, quiet_a, quiet_b, last = (
        f"mlx-demo/Sized{word}-4bit",
        f"mlx-demo/QuietA{word}-4bit",
        f"mlx-demo/QuietB{word}-bf16",
        f"mlx-demo/Last{word}-4bit",
    )
    hub.create_repo(sized, quantized, info={"downloads": 300})
    # Their listing entries say nothing of their weights: the page checks each on its own.
    hub.create_repo(quiet_a, quantized, info={"downloads": 200, "safetensors": None})
    hub.create_repo(quiet_b, tiny_model_files(tiny_model_path), info={"downloads": 100, "safetensors": None})
    hub.create_repo(last, quantized, info={"downloads": 1})
    held = hub.faults.hold(f"/api/models/{quiet_a}/*")
    server = AsgiServer(
        env={**stack_env, "DISCOVER_MAX_RESULTS": "3", "DISCOVER_DETAILS_CONCURRENCY": "1"},
        log_dir=process_log_dir,
    ).wait_ready()
    try:
        page = new_page(browser, server.url)
        login(page, "root", "root-password")
        page.goto(f"/discover/?q={word}&mlx=1")
        row_a, row_b = page.locator(f"[data-repo='{quiet_a}']"), page.locator(f"[data-repo='{quiet_b}']")
        # The listing is on the page while the Hub still holds quiet_a's details back.
        page.locator(f"[data-repo='{quiet_a}'][data-details=checking]").wait_for()
        assert "checking" in row_a.locator("[data-testid=verdict]").inner_text()
        assert row_a.locator("[data-cell=size]").inner_text() == "—"
        sized_row = page.locator(f"[data-repo='{sized}']")
        assert (
            sized_row.get_attribute("data-verdict") == "green"
            and sized_row.get_attribute("data-details") is None
        )
        # One check at a time: quiet_b waits its turn, and the Hub has not been asked about it.
        assert row_b.get_attribute("data-details") == "pending"
        assert not [r for r in hub.requests if r.path.startswith(f"/api/models/{quiet_b}")]

        held.release()
        page.locator(f"[data-repo='{quiet_a}'][data-details=done]").wait_for()
        page.locator(f"[data-repo='{quiet_b}'][data-details=done]").wait_for()
        assert row_a.get_attribute("data-verdict") == "green"
        assert row_a.locator("[data-testid=verdict]").inner_text() == "green"
        # The same weights as its listed 4-bit twin, to the byte, shown the same way.
        size = row_a.locator("[data-cell=size]").inner_text()
        assert size != "—" and size == sized_row.locator("[data-cell=size]").inner_text()
        assert row_a.locator("[data-cell=quantization]").inner_text() == "4-bit"
        assert row_b.locator("[data-cell=quantization]").inner_text() == "bf16"
        assert row_b.locator("[data-cell=size]").inner_text() != "—"
        assert page.locator(f"[data-repo='{last}']").count() == 0

        page.get_by_role("link", name="More results").click()
        page.locator(f"[data-repo='{last}']").wait_for()
        assert page.locator("[data-testid=discover-result]").count() == 1
        assert page.locator("[data-testid=discover-more]").count() == 0
    finally:
        held.release()
        hub.faults.clear()
        server.stop()
