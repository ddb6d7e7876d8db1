"""The overview and the health page show every machine in a real browser: this one up with its disk and
memory (from its worker's heartbeat), a remembered one whose workers stopped as down, with when it was last
seen and that its models are unavailable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from models_app.models import Node
from tests.browser.helpers import login, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_overview_and_health_pages_show_each_machine_up_or_down(  # type: ignore[no-untyped-def]
    browser, asgi_server, download_worker, alice, settings
) -> None:
    # A machine the database remembers (its reconcile ran an hour ago) and no worker of which beats.
    Node.objects.create(name="box-gone", last_seen=timezone.now() - timedelta(hours=1))
    page = new_page(browser, asgi_server.url)
    login(page, "alice", "alice-password")

    for url in ("/", "/health/"):
        page.goto(url)
        here = page.locator(f"[data-testid=nodes] [data-node='{settings.NODE_NAME}']")
        gone = page.locator("[data-testid=nodes] [data-node='box-gone']")
        here.wait_for()
        assert (
            here.get_attribute("data-state") == "up" and here.locator("[data-testid=node-state]").is_visible()
        )
        assert "(this one)" in here.inner_text()
        assert "cache default" in here.inner_text() and "budget" in here.inner_text()  # its heartbeat's facts
        assert gone.get_attribute("data-state") == "down" and gone.is_visible()
        text = gone.inner_text()
        assert "last seen an hour ago" in text and "its models are unavailable until it is back" in text
    screenshot(page, "health-nodes", full_page=True)
