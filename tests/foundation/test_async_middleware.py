"""The ASGI handler runs every middleware in its event loop: one sync-only middleware (WhiteNoise's was) makes
Django hand every request to its one sync thread and back, twice, queueing concurrent SSE streams and API calls
behind each other on that thread."""

from __future__ import annotations

import logging

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, override_settings


def test_the_asgi_handler_adapts_no_middleware(caplog: pytest.LogCaptureFixture) -> None:
    # Django logs each adaptation it makes when DEBUG is on (django.core.handlers.base.adapt_method_mode).
    with override_settings(DEBUG=True), caplog.at_level(logging.DEBUG, logger="django.request"):
        ASGIHandler()  # loads the middleware chain in async mode
    adapted = [r.getMessage() for r in caplog.records if "adapted" in r.getMessage()]
    assert adapted == []


@pytest.mark.django_db
def test_static_files_are_still_served_from_the_event_loop() -> None:
    response = async_to_sync(AsyncClient().get)("/static/vendor/markdown-it/markdown-it.min.js")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert b"markdown" in body
    assert response["Content-Type"].startswith("text/javascript")
