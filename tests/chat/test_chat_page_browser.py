"""The chat page's rendering in real Chromium: markdown-it (vendored) renders links, tables and nested lists
while model output still never becomes HTML; the settings fold to a one-line summary once a chat starts; each
answer names its model; the figures, the cached prompt tokens included, survive a reload."""

from __future__ import annotations

import pytest

from models_app.models import Message
from tests.browser.helpers import launch_browser, login, new_page
from tests.factories import make_snapshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# (markdown, must be in the HTML, must not be in the HTML)
CASES = [
    # Emphasis rules used to run inside the URL and the attributes: a broken href and target="<em>blank".
    ("[a_](https://e.com/_x_)", ['href="https://e.com/_x_"', 'target="_blank"', ">a_</a>"], ["<em>"]),
    ("| a | b |\n|---|---|\n| 1 | 2 |", ["<table>", "<th>a</th>", "<td>2</td>"], []),
    ("- one\n  - nested\n- two", ["<li>one\n<ul>\n<li>nested</li>"], []),
    ("1. first\n2. second", ["<ol>", "<li>second</li>"], []),
    # Untrusted output: tags stay text, only http(s)/mailto links, no images.
    ("<img src=x onerror=alert(1)>", ["&lt;img src=x onerror=alert(1)&gt;"], ["<img"]),
    ("<script>alert(1)</script>", ["&lt;script&gt;"], ["<script"]),
    ("[x](javascript:alert(1))", [], ["<a", "href"]),
    ("[x](JaVaScRiPt:alert(1))", [], ["<a"]),
    ("[x](data:text/html;base64,PHNjcmlwdD4=)", [], ["<a"]),
    ("[x](/admin/)", [], ["<a"]),
    ("![i](https://e.com/i.png)", [], ["<img"]),
    ('[x](https://e.com/" onmouseover="alert(1))', [], ['onmouseover="alert']),
    ("`<b>` **ok**", ["<code>&lt;b&gt;</code>", "<strong>ok</strong>"], ["<b>"]),
    ("```html\n<b>x</b>\n```", ['<code class="language-html">&lt;b&gt;x&lt;/b&gt;'], ["<b>"]),
]


def test_the_chat_page_renders_and_remembers(alice, tiny_model_path, asgi_server, inference_worker):  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    make_snapshot("test/tiny-chat", path=tiny_model_path)

    with launch_browser() as browser:
        page = new_page(browser, asgi_server.url)
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        login(page, "alice", "alice-password")
        page.goto("/chat/")

        for source, present, absent in CASES:
            html = page.evaluate("(s) => renderMarkdown(s)", source)
            for fragment in present:
                assert fragment in html, (source, html)
            for fragment in absent:
                assert fragment not in html, (source, html)

        settings = page.locator("#chat-settings")
        expect(settings).to_have_attribute("open", "")
        page.fill("#opt-max_tokens", "8")
        page.fill("#opt-temperature", "0")
        page.wait_for_selector("#chat[data-connected]")
        for count, turn in enumerate(("hello there", "and again"), start=1):
            page.fill("#prompt", turn)
            page.press("#prompt", "Enter")
            expect(page.locator(".msg.assistant")).to_have_count(count)
            answer = page.locator(".msg.assistant").last
            expect(answer).to_have_attribute("data-status", "complete")
            expect(answer.locator("[data-role=model]")).to_have_text("test/tiny-chat")
        # Folded after the first message, with what was chosen in one line.
        assert settings.get_attribute("open") is None
        summary = page.locator("#settings-summary")
        expect(summary).to_be_visible()
        expect(summary).to_contain_text("test/tiny-chat")
        expect(summary).to_contain_text("max tokens 8")
        live_figures = page.locator(".msg.assistant").last.locator("[data-role=figures]").text_content()

        page.reload()
        last = page.locator(".msg.assistant").last
        expect(last.locator("[data-role=model]")).to_have_text("test/tiny-chat")
        assert "cached)" in live_figures, live_figures
        expect(last.locator("[data-role=figures]")).to_have_text(live_figures)
        assert not errors, errors

    follow_up = Message.objects.filter(role="assistant").order_by("id").last()
    assert follow_up.cached_tokens and follow_up.cached_tokens > 0
