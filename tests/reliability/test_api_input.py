"""Bad input on every write endpoint of both APIs, against the real server: malformed JSON, JSON nested
thousands deep, bodies over DATA_UPLOAD_MAX_MEMORY_SIZE, wrong content types and wrong types all get a 4xx,
never a 5xx. Then schemathesis in negative mode (schema-violating parameters and bodies) over the whole REST
API: never a 5xx, always a rejection (4xx). (Positive-mode conformance: test_api_schema.py.)"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2 as httpx
import pytest
import schemathesis
from django.conf import settings as django_settings
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection

from models_app.models import ApiKey
from tests.api.conftest import generated_schema

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

SCHEMA = generated_schema()
OPENAI_WRITES = [("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]
WRONG = {"string": 12345, "integer": "twelve", "number": "NaN?", "boolean": "maybe", "array": {"a": 1}}


def rest_writes() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path with ids filled in, request body schema) for every REST operation that takes a body."""
    found = []
    for path, operations in SCHEMA["paths"].items():
        for method, operation in operations.items():
            if method not in ("post", "put", "patch") or "requestBody" not in operation:
                continue
            ref = operation["requestBody"]["content"]["application/json"]["schema"].get("$ref", "")
            body = SCHEMA["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
            found.append((method.upper(), re.sub(r"\{\w+\}", "1", path), body))
    return sorted(found, key=lambda item: item[:2])


def wrong_type_bodies(body_schema: dict[str, Any]) -> list[Any]:
    """Not an object at all, and the object with each property of the wrong type."""
    bodies: list[Any] = [[], "text", 42, None, [{"repo_id": "a/b"}]]
    for name, prop in (body_schema.get("properties") or {}).items():
        kind = prop.get("type") or ("string" if "enum" in prop else "object")
        bodies.append({name: WRONG.get(kind, [1, 2])})
    return bodies


WRITES = [(m, p) for m, p, _ in rest_writes()] + OPENAI_WRITES


@pytest.fixture
def api(asgi_server, staff):  # type: ignore[no-untyped-def]
    """A staff key: staff-only operations get past authorization and parse their bodies too."""
    key = ApiKey.issue(user=staff, name="bad-input")[1]
    with httpx.Client(
        base_url=asgi_server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        yield client


def send(api: httpx.Client, method: str, path: str, body: bytes, content_type: str = "application/json"):  # type: ignore[no-untyped-def]
    return api.request(method, path, content=body, headers={"Content-Type": content_type})


def assert_4xx(response, what: str) -> None:  # type: ignore[no-untyped-def]
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"


def test_every_write_endpoint_is_covered() -> None:
    paths = {p for _, p in WRITES}
    assert {"/api/v1/pulls", "/api/v1/credentials", "/api/v1/keys", "/v1/chat/completions"} <= paths


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_malformed_json_is_a_4xx(api: httpx.Client, method: str, path: str) -> None:
    for body in (b'{"repo_id": ', b"{'single': 'quotes'}", b"\xff\xfe\x00garbage", b'{"a": NaN}x'):
        assert_4xx(send(api, method, path, body), f"{method} {path} {body!r}")


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_json_nested_very_deep_is_a_4xx(api: httpx.Client, method: str, path: str) -> None:
    depth = 100_000  # 200 kB: far below the size limit, far beyond Python's recursion limit
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        assert_4xx(send(api, method, path, body), f"{method} {path} nested {depth} deep")


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_body_over_the_size_limit_is_refused(api: httpx.Client, method: str, path: str) -> None:
    # Valid JSON, and valid for the endpoint but for a huge extra field: only its size is wrong.
    padding = "x" * (django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    body = {"repo_id": "a/b", "name": "big", "token": "hf_x", "model": "a/b", "prompt": "hi", "pad": padding}
    response = send(api, method, path, json.dumps(body).encode())
    assert response.status_code == 413 or response.status_code == 400, (method, path, response.status_code)


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_wrong_content_type_is_a_4xx(api: httpx.Client, method: str, path: str) -> None:
    assert_4xx(send(api, method, path, b"repo_id=a/b", "text/plain"), f"{method} {path} text/plain")


@pytest.mark.parametrize(
    ("method", "path", "schema"), rest_writes(), ids=[f"{m} {p}" for m, p, _ in rest_writes()]
)
def test_wrong_types_are_a_4xx(api: httpx.Client, method: str, path: str, schema: dict[str, Any]) -> None:
    for body in wrong_type_bodies(schema):
        assert_4xx(send(api, method, path, json.dumps(body).encode()), f"{method} {path} {body!r}")


@pytest.mark.parametrize(("method", "path"), OPENAI_WRITES)
def test_wrong_types_are_a_4xx_on_the_openai_api(api: httpx.Client, method: str, path: str) -> None:
    for body in (
        [],
        "text",
        {"model": 42, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"},
        {"model": "a/b", "messages": "hi", "prompt": ["hi", 1]},
        {"model": "a/b", "messages": [{"role": 7, "content": {"x": 1}}], "prompt": {"x": 1}},
        {
            "model": "a/b",
            "messages": [{"role": "user", "content": "hi"}],
            "prompt": "hi",
            "max_tokens": "lots",
        },
        {"model": "a/b", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "temperature": [1]},
        {"model": "a/b", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "stream": "yes"},
    ):
        response = send(api, method, path, json.dumps(body).encode())
        assert_4xx(response, f"{method} {path} {body!r}")
        assert set(response.json()) == {"error"}  # OpenAI's error envelope


# --- Schemathesis, negative mode ------------------------------------------------------------------------------

negative_schema = schemathesis.openapi.from_dict(generated_schema())
negative_schema.config.generation.update(modes=[GenerationMode.NEGATIVE])


@pytest.fixture
def fuzz_key(staff) -> str:  # type: ignore[no-untyped-def]
    return ApiKey.issue(user=staff, name="schemathesis-negative")[1]


# Left out, as in the positive run: revoking keys (it would revoke its own) and a real cache cleanup.
@(
    negative_schema.exclude(method="DELETE", path="/api/v1/keys/{id}")
    .exclude(method="POST", path="/api/v1/cache/cleanup")
    .parametrize()
)
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_violating_requests_never_get_a_5xx(case, asgi_server, fuzz_key: str) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(
        base_url=asgi_server.url,
        headers={"Authorization": f"Bearer {fuzz_key}"},
        checks=[not_a_server_error, negative_data_rejection],
        timeout=30,
    )
