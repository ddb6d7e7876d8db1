"""Cross-site request forgery: a session-authenticated POST without the CSRF token is refused (403) on every
page and on every write endpoint of the REST API; an API-key request needs no token; a session alone never
authenticates the OpenAI-compatible API (which is CSRF-exempt because it takes API keys only)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from models_app.models import ApiKey
from tests.api.test_schema import generated_schema

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]


def page_urls() -> list[str]:
    """Every dashboard URL (pages and chat), ids filled in: CSRF is checked before the view looks at them."""
    urls = []

    def walk(patterns: list, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                if not route.startswith(("api/", "v1/", "admin/")):
                    walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route not in ("healthz", "login/"):
                urls.append("/" + re.sub(r"<(?:\w+:)?\w+>", "1", route))

    walk(get_resolver().url_patterns, "")
    return sorted(set(urls))


def api_writes() -> list[tuple[str, str]]:
    """Every POST, PUT, PATCH and DELETE of the REST API, from its OpenAPI schema."""
    schema = generated_schema()
    return sorted(
        (method.upper(), re.sub(r"\{\w+\}", "1", path))
        for path, operations in schema["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete")
    )


def session_client(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_the_lists_are_complete() -> None:
    pages, writes = page_urls(), api_writes()
    assert {"/pull/", "/settings/credentials/", "/settings/keys/", "/chat/1/delete/", "/logout/"} <= set(
        pages
    )
    assert {("POST", "/api/v1/pulls"), ("POST", "/api/v1/credentials"), ("DELETE", "/api/v1/keys/1")} <= set(
        writes
    )


@pytest.mark.parametrize("url", page_urls())
def test_a_page_post_without_the_csrf_token_is_refused(alice, url: str) -> None:
    response = session_client(alice).post(url, {"name": "x", "repo_id": "a/b", "token": "hf_x"})
    assert response.status_code == 403, (url, response.status_code)


def test_the_same_post_with_the_token_goes_through(alice) -> None:
    client = session_client(alice)
    client.get("/settings/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/settings/keys/", {"name": "laptop", "csrfmiddlewaretoken": token})
    assert response.status_code in (200, 302)
    assert ApiKey.objects.filter(user=alice, name="laptop").exists()


@pytest.mark.parametrize(("method", "url"), api_writes())
def test_an_api_write_with_a_session_and_no_csrf_token_is_refused(alice, method: str, url: str) -> None:
    response = session_client(alice).generic(method, url, "{}", content_type="application/json")
    assert response.status_code == 403, (method, url, response.status_code)
    assert "CSRF" in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "url"), api_writes())
def test_an_api_write_with_an_api_key_needs_no_csrf_token(alice, method: str, url: str) -> None:
    key = ApiKey.issue(user=alice, name="script")[1]
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {key}")
    response = client.generic(method, url, "{}", content_type="application/json")
    # Refused for what it asks (400, 403 staff-only, 404 no such id), never for a missing CSRF token.
    assert response.status_code < 500
    assert "CSRF" not in response.content.decode(), (method, url, response.content)


@pytest.mark.parametrize("url", ["/v1/chat/completions", "/v1/completions"])
def test_a_session_does_not_authenticate_the_openai_api(alice, url: str) -> None:
    body = '{"model": "x/y", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}'
    response = session_client(alice).post(url, body, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["type"] in ("invalid_request_error", "authentication_error")
