"""The API's own Django handler (dashboard/api_handler.py): an API request makes no trip to Django's sync thread
for middleware, and its responses keep the dashboard's security headers and HTTPS redirect."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from channels.testing import HttpCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings

from dashboard.api_handler import ApiHandler, is_api

TIMEOUT = 30

SECURITY_HEADERS = [
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
    "content-security-policy",
    "x-frame-options",
]


def _get(
    app: Any, path: str, monkeypatch: pytest.MonkeyPatch, host: bytes = b"localhost"
) -> tuple[dict[str, Any], int]:
    """The response to a GET through `app`, and how many calls went to a thread through sync_to_async."""
    trips = []
    call = SyncToAsync.__call__

    async def counted(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await call(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(SyncToAsync, "__call__", counted)
        communicator = HttpCommunicator(app, "GET", path, headers=[(b"host", host)])
        # Not the communicator's 1 s: a loaded machine's first request (its imports) took longer once.
        response = async_to_sync(communicator.get_response)(timeout=TIMEOUT)
    return response, len(trips)


def _headers(response: dict[str, Any]) -> dict[str, str]:
    return {name.decode().lower(): value.decode() for name, value in response["headers"]}


@pytest.mark.django_db
def test_an_api_request_makes_no_more_trips_to_a_thread_than_django_without_middleware(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dashboard.asgi import application

    api, api_trips = _get(application, "/v1/models", monkeypatch)
    with override_settings(MIDDLEWARE=[]):
        bare, bare_trips = _get(ASGIHandler(), "/v1/models", monkeypatch)
    dashboard, dashboard_trips = _get(ASGIHandler(), "/v1/models", monkeypatch)

    assert api["status"] == bare["status"] == dashboard["status"] == 401  # no key: the key check's own trip
    assert api_trips == bare_trips
    # The dashboard's stack on the same request: its middleware hooks, a trip each (what the API no longer pays).
    assert dashboard_trips >= bare_trips + 10


@pytest.mark.django_db
@pytest.mark.django_db
def test_the_sync_code_of_api_requests_runs_in_one_long_lived_thread_not_a_new_one_each() -> None:
    """Django's handler starts and joins a thread per request for its thread-sensitive code (the signals'
    database receivers, the response's close); the API's runs it in asgiref's one sync thread."""
    from django.core.signals import request_started

    from dashboard.asgi import application

    def threads_of(app: Any) -> list[threading.Thread]:
        seen: list[threading.Thread] = []  # held, so no thread object is freed and its id reused

        def receiver(**kwargs: Any) -> None:
            seen.append(threading.current_thread())

        request_started.connect(receiver)
        try:
            for _ in range(3):
                # In an event loop of its own, as under uvicorn: inside async_to_sync, asgiref would run the
                # sync code in the calling thread instead.
                communicator = HttpCommunicator(app, "GET", "/v1/models", headers=[(b"host", b"localhost")])
                response = asyncio.run(communicator.get_response(timeout=TIMEOUT))
                assert response["status"] == 401
        finally:
            request_started.disconnect(receiver)
        return seen

    ours, django = threads_of(application), threads_of(ASGIHandler())
    assert len(ours) == len(django) == 3
    assert len({id(t) for t in ours}) == 1
    assert len({id(t) for t in django}) == 3  # what the API no longer pays


@pytest.mark.django_db
def test_a_completion_does_not_wait_for_the_request_started_receivers() -> None:
    """Django awaits request_started's sync receivers (a trip to its sync thread) before the view starts; the
    API sends them meanwhile. With a receiver held in that thread, a completion is still answered (a 401: no
    key; its checks run in a pooled thread)."""
    from django.core.signals import request_started

    from dashboard.asgi import application

    held, entered = threading.Event(), threading.Event()

    def receiver(**kwargs: Any) -> None:
        entered.set()
        held.wait(TIMEOUT)

    async def complete() -> dict[str, Any]:
        communicator = HttpCommunicator(
            application, "POST", "/v1/chat/completions", body=b"{}", headers=[(b"host", b"localhost")]
        )
        return await communicator.get_response(timeout=TIMEOUT / 3)

    request_started.connect(receiver)
    try:
        # Answered while the receiver is held (or before the sync thread even got to it): Django's handler
        # would wait out the receiver's TIMEOUT first, past the response's.
        response = asyncio.run(complete())
        held.set()
        assert entered.wait(TIMEOUT)  # the receivers still ran
    finally:
        held.set()
        request_started.disconnect(receiver)
    assert response["status"] == 401


@pytest.mark.django_db
def test_a_views_own_sync_call_runs_after_the_request_started_receivers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """They look after the sync thread's database connection, so they must come first there: /v1/models
    checks its key in that thread at once."""
    from django.core.signals import request_started

    from dashboard.asgi import application
    from models_app.openai import views

    order: list[str] = []
    request_key = views._request_key

    def receiver(**kwargs: Any) -> None:
        order.append("request_started")

    def checked(authorization: str) -> Any:
        order.append("key")
        return request_key(authorization)

    monkeypatch.setattr(views, "_request_key", checked)
    request_started.connect(receiver)
    try:
        for _ in range(3):
            communicator = HttpCommunicator(
                application, "GET", "/v1/models", headers=[(b"host", b"localhost")]
            )
            response = asyncio.run(communicator.get_response(timeout=TIMEOUT))
            assert response["status"] == 401
    finally:
        request_started.disconnect(receiver)
    assert order == ["request_started", "key"] * 3


def test_api_responses_carry_the_dashboards_security_headers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dashboard.asgi import application

    api, _ = _get(application, "/v1/models", monkeypatch)
    dashboard, _ = _get(ASGIHandler(), "/v1/models", monkeypatch)
    for name in SECURITY_HEADERS:
        assert _headers(api)[name] == _headers(dashboard)[name], name
    assert _headers(api)["x-frame-options"] == "DENY"
    assert "set-cookie" not in _headers(api)  # no session, no CSRF cookie: an API key is the only credential


@pytest.mark.django_db
def test_an_api_request_over_http_is_redirected_when_https_is_required(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with override_settings(SECURE_SSL_REDIRECT=True):
        response, _ = _get(ApiHandler(), "/v1/models", monkeypatch)
    assert response["status"] == 301
    assert _headers(response)["location"].startswith("https://")


@pytest.mark.django_db
def test_an_api_request_for_a_host_not_allowed_is_refused(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """As the dashboard's CommonMiddleware does: a rebound DNS name pointing at this server is not served."""
    from dashboard.asgi import application

    response, _ = _get(application, "/v1/models", monkeypatch, host=b"attacker.example")
    assert response["status"] == 400


def test_only_the_v1_paths_go_to_the_api_handler() -> None:
    assert is_api({"path": "/v1/chat/completions"})
    assert is_api({"path": "/mlx/v1/models", "root_path": "/mlx"})  # served below a prefix
    assert not is_api({"path": "/api/v1/pulls"})  # the REST API: sessions and CSRF apply
    assert not is_api({"path": "/v1"})
    assert not is_api({"path": "/models/"})
