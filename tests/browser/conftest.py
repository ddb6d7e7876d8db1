"""Browser fixtures (see helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.helpers import launch_browser


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium for one test. Playwright's sync API runs an event loop in this thread, and Django
    refuses ORM calls while a loop runs; the test's own ORM calls are plain synchronous code, so that check
    is lifted, for the browser tests only."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with launch_browser() as browser:
        yield browser
