"""Saved "Default generation settings" seed every new chat: saved on the Settings page in real Chromium, shown
by a new chat's fields, and sent with its first message (the conversation records them). The chat page used
to start from its own defaults whatever the user saved."""

from __future__ import annotations

import pytest

from models_app.models import Conversation
from tests.browser.helpers import launch_browser, login, new_page
from tests.factories import make_snapshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_saved_defaults_seed_a_new_chat(alice, tiny_model_path, asgi_server, inference_worker):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    make_snapshot("test/tiny-chat", path=tiny_model_path)

    with launch_browser() as browser:
        page = new_page(browser, asgi_server.url)
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        login(page, "alice", "alice-password")
        page.goto("/settings/")
        form = page.locator("#defaults form")
        form.locator("[name=temperature]").fill("0.2")
        form.locator("[name=top_p]").fill("0.5")
        form.locator("[name=max_tokens]").fill("12")
        form.locator("[name=system_prompt]").fill("Answer in one line.")
        form.locator("button[type=submit]").click()
        page.wait_for_load_state()

        page.goto("/chat/")
        expect(page.locator("#opt-temperature")).to_have_value("0.2")
        expect(page.locator("#opt-top_p")).to_have_value("0.5")
        expect(page.locator("#opt-max_tokens")).to_have_value("12")
        expect(page.locator("#system-prompt")).to_have_value("Answer in one line.")

        page.wait_for_selector("#chat[data-connected]")
        page.fill("#prompt", "hello")
        page.press("#prompt", "Enter")
        page.wait_for_url("**/chat/*/")
        expect(page.locator(".msg.assistant").last).to_have_attribute("data-status", "complete")
        assert not errors, errors

    conversation = Conversation.objects.get(user=alice)
    assert conversation.system_prompt == "Answer in one line."
    assert conversation.settings["temperature"] == 0.2
    assert conversation.settings["top_p"] == 0.5
    assert conversation.settings["max_tokens"] == 12
