"""Shared by the browser tests: launch the system's headless Chromium through Playwright, log in through the
login form, take screenshots. Nothing is downloaded: Chromium comes from the OS (`make browser`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def require_chromium() -> Path:
    """Skip when Chromium is missing, unless REQUIRE_BROWSER=1 (CI): then it is a failure."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = "headless Chromium not found: apt-get install chromium (or make browser)"
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def launch_browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, base_url: str, *, viewport: dict[str, int] = DESKTOP) -> Any:
    """A page in a fresh context (its own cookies), with relative URLs resolved against the server."""
    context = browser.new_context(base_url=base_url, viewport=viewport, color_scheme="light")
    context.set_default_timeout(15_000)
    return context.new_page()


def login(page: Any, username: str, password: str) -> None:
    """Through the real login form, as a person would."""
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login/" not in url)


def screenshot(page: Any, name: str, *, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
