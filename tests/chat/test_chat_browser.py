"""The chat page in headless Chromium against the real server and the real inference worker: log in through
the login page, pick a model, send with Enter, watch the answer stream, Stop it, reload: the history is
still there (the database is the truth); regenerate it. Screenshot: docs/screenshots/chat.png."""

from __future__ import annotations

import pytest

from models_app.models import Message, Usage
from tests.browser.helpers import launch_browser
from tests.conftest import ROOT
from tests.factories import make_snapshot

SCREENSHOT = ROOT / "docs" / "screenshots" / "chat.png"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_chat_in_a_browser(alice, tiny_model_path, slow_model_path, asgi_server, inference_worker):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    # All database work happens outside Playwright's sync API, which runs an event loop on this thread.
    make_snapshot("test/tiny-chat", path=tiny_model_path)
    slow = make_snapshot("test/slow-storyteller", path=slow_model_path)

    with launch_browser() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{asgi_server.url}/login/?next=/chat/")
        page.fill("#id_username", "alice")
        page.fill("#id_password", "alice-password")
        page.click("button[type=submit]")
        page.wait_for_url("**/chat/")

        page.select_option("#model", str(slow.id))
        page.fill("#system-prompt", "You tell long stories.")
        page.fill("#prompt", "Tell me a very long story")
        page.press("#prompt", "Enter")  # Enter sends

        answer = page.locator(".msg.assistant").last
        body = answer.locator("[data-role=body]")
        page.wait_for_function(
            "() => (document.querySelector('.msg.assistant:last-child [data-role=body]') || {}).textContent"
            "?.length > 40"
        )
        expect(page.locator("#stop")).to_be_visible()
        page.wait_for_url("**/chat/*/")  # the new conversation's address
        # ...and the sidebar lists it at once, without a reload.
        expect(page.locator(".conv-list a[aria-current=page]")).to_have_text("Tell me a very long story")
        page.click("#stop")
        expect(answer).to_have_attribute("data-status", "stopped")
        expect(page.locator("#stop")).to_be_hidden()
        partial = body.text_content()
        assert partial

        page.reload()
        expect(page.locator(".msg.user")).to_have_count(1)
        user_text = page.locator(".msg.user [data-role=body]").text_content()
        assert user_text == "Tell me a very long story"
        restored = page.locator(".msg.assistant").last
        expect(restored).to_have_attribute("data-status", "stopped")
        assert restored.locator("[data-role=body]").text_content() == partial
        expect(page.locator("#system-prompt")).to_have_value("You tell long stories.")
        expect(page.locator(".conv-list a[aria-current=page]")).to_have_text("Tell me a very long story")

        # Model output can never inject HTML: the renderer escapes first.
        injected = page.evaluate(
            "() => renderMarkdown('<img src=x onerror=alert(1)> [x](javascript:alert(1)) **ok** `<b>`')"
        )
        assert "<img" not in injected and "javascript:" not in injected.replace("[x](javascript:", "")
        assert "<strong>ok</strong>" in injected and "<code>&lt;b&gt;</code>" in injected

        # Regenerate the stopped answer, short this time: it completes, with its figures.
        page.click("#chat-settings summary")
        page.fill("#opt-max_tokens", "12")
        page.click("#regenerate")
        regenerated = page.locator(".msg.assistant").last
        expect(regenerated).to_have_attribute("data-status", "complete")
        expect(regenerated.locator("[data-role=figures]")).to_contain_text("12 tokens")
        expect(page.locator(".msg.assistant")).to_have_count(1)

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        # Phone width: the composer is still there and usable.
        page.set_viewport_size({"width": 390, "height": 800})
        expect(page.locator("#prompt")).to_be_visible()
        expect(page.locator("#send")).to_be_visible()

    assert errors == []
    answer_row = Message.objects.filter(role="assistant").get()
    assert (answer_row.status, answer_row.completion_tokens, answer_row.finish_reason) == (
        "complete",
        12,
        "length",
    )
    assert sorted(Usage.objects.values_list("finish_reason", flat=True)) == ["cancelled", "length"]
