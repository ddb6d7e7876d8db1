"""Content-Security-Policy (issue 11, item 15): every page of the product, loaded in real Chromium from the real
server with the production policy on, causes no CSP violation, and the pages that need their scripts still
work under it (live downloads socket, charts, chat socket, the pull preview, Swagger UI).

Violations are caught two ways: a `securitypolicyviolation` listener installed before each page's own scripts,
and Chromium's console ("Refused to ... because it violates the following Content Security Policy").
Pages: every page of the site (lists, details, forms, the pull plan, the new-key page), the login page, the
API docs and the browsable API, a 404, and for the admin every registered model's list, add and change pages."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.urls import reverse
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from models_app.models import Conversation, DownloadJob, Message, Snapshot
from tests.browser.helpers import login, new_page
from tests.browser.test_dashboard_browser import HUB_TOKEN, seed_history
from tests.factories import make_job, make_snapshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


class Violations:
    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", self._console)
        page.context.add_init_script(RECORD_VIOLATIONS)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.console.append(f"{self.page.url}: {message.text}")

    def visit(self, url: str, *, ready: str | None = None) -> list[str]:
        response = self.page.goto(url)
        assert response is not None and "content-security-policy" in response.headers, url
        return self.check(ready)

    def check(self, ready: str | None = None) -> list[str]:
        self.page.wait_for_load_state("load")
        seen: list[str] = []
        if ready:
            try:
                self.page.wait_for_function(ready, timeout=30_000)
            except PlaywrightTimeout:
                seen.append(f"{self.page.url}: the page never got ready under the policy ({ready})")
        self.page.wait_for_timeout(200)  # a late violation (a deferred script's work) is reported async
        seen += [f"{self.page.url}: {v}" for v in self.page.evaluate("window.__csp || []")]
        seen += self.console
        self.console.clear()
        return seen


def seed(staff: Any, tiny_model_path: Any) -> dict[str, Any]:
    """One of everything a page can show: a ready model with usage and a conversation, a running and a failed
    download, a Hub token, an API key."""
    snapshot = make_snapshot("demo/tiny-chat", path=tiny_model_path)
    seed_history(staff, snapshot)
    running = make_snapshot("demo/still-coming", owner=staff, status=Snapshot.Status.DOWNLOADING)
    make_job(running, user=staff, state=DownloadJob.State.RUNNING, bytes_done=300_000)
    make_job(running, user=staff, state=DownloadJob.State.FAILED, error_code="network", error_message="gone")
    conversation = Conversation.objects.create(user=staff, title="Hello", snapshot=snapshot)
    Message.objects.create(conversation=conversation, role="user", content="Show me *markdown* and `code`")
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="# Title\n\n- a list\n- **bold**\n\n```python\nprint('hi')\n```\n\n[a link](https://example.com)",
    )
    return {"snapshot": snapshot, "conversation": conversation}


def admin_urls() -> list[str]:
    urls = [reverse("admin:index")]
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        if model_admin.has_add_permission(_superuser_request()):
            urls.append(reverse("admin:{}_{}_add".format(*info)))
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[first.pk]))
        urls.append(reverse("admin:app_list", args=[info[0]]))
    return sorted(set(urls))


def _superuser_request() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.filter(is_superuser=True).first()
    return request


def test_no_page_violates_the_content_security_policy(
    browser, hub, staff, tiny_model_path, asgi_server
) -> None:
    from devkit.tinymodel import tiny_model_files

    hub.add_token(HUB_TOKEN, "root")
    seeded = seed(staff, tiny_model_path)
    snapshot, conversation = seeded["snapshot"], seeded["conversation"]
    hub.delete_repo("demo/pull-me")
    hub.create_repo("demo/pull-me", tiny_model_files(tiny_model_path))

    page = new_page(browser, asgi_server.url)
    watch = Violations(page)
    found: list[str] = []

    found += watch.visit("/login/")
    login(page, "root", "root-password")
    found += watch.check()

    live = "() => (document.querySelector('[data-ws-status]')?.innerText || '').includes('Live')"
    charts = "() => document.querySelectorAll('svg').length > 0"
    pages: list[tuple[str, str | None]] = [
        ("/", live),
        ("/models/", None),
        ("/models/?sort=size&status=ready", None),
        (f"/models/{snapshot.id}/", charts),
        (f"/models/{snapshot.id}/delete/", None),
        ("/pull/", None),
        ("/pull/?repo=demo/pull-me", None),
        ("/pull/?repo=demo/pull-me&preview=1", "() => document.querySelector('[data-testid=plan]') !== null"),
        ("/discover/", None),
        (
            "/discover/?q=pull-me&mlx=1",
            "() => document.querySelector('[data-testid=discover-result]') !== null",
        ),
        ("/downloads/", live),
        ("/cache/", None),
        ("/usage/", charts),
        ("/usage/?days=30", charts),
        ("/settings/", None),
        ("/health/", None),
        ("/chat/", "() => document.querySelector('#send') !== null"),
        (
            f"/chat/{conversation.id}/",
            # chat.js renders the stored Markdown once its socket is up
            "() => document.querySelector('article.msg.assistant .msg-body h1, article.msg.assistant .msg-body ul')",
        ),
        ("/api/docs/", "() => document.querySelector('.swagger-ui .info') !== null"),
        ("/api/v1/models", None),
        ("/healthz", None),
        ("/no-such-page/", None),
    ]
    for url, ready in pages:
        found += watch.visit(url, ready=ready)

    # The pages that only a form leads to: the pull plan and the new API key.
    page.goto("/pull/")
    page.get_by_label("Repository").fill("demo/pull-me")
    page.get_by_role("button", name="Preview").click()
    page.locator("[data-testid=plan]").wait_for()
    found += watch.check()
    page.goto("/settings/")
    page.locator("#api-keys input[name=name]").fill("csp")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_url("**/settings/keys/new/")
    found += watch.check()

    admin_pages = admin_urls()
    assert len(admin_pages) > 25  # the index, every model's list, and the add and change pages it has
    for url in admin_pages:
        found += watch.visit(url)

    assert found == [], "\n".join(found)
