"""Fixtures for the API tests: keys, clients that send them, and a ready snapshot of the tiny model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from models_app.models import ApiKey, Snapshot
from tests import factories
from tests.chat.conftest import slow_model_path  # noqa: F401  (a fixture, re-exported for the API tests)


class KeyClient(Client):
    """A test client that authenticates every request with an API key, as a script would."""

    def __init__(self, raw_key: str, **defaults: Any) -> None:
        super().__init__(HTTP_AUTHORIZATION=f"Bearer {raw_key}", **defaults)
        self.raw_key = raw_key


@pytest.fixture
def alice_key(alice) -> str:  # type: ignore[no-untyped-def]
    return ApiKey.issue(user=alice, name="alice-ci")[1]


@pytest.fixture
def bob_key(bob) -> str:  # type: ignore[no-untyped-def]
    return ApiKey.issue(user=bob, name="bob-ci")[1]


@pytest.fixture
def staff_key(staff) -> str:  # type: ignore[no-untyped-def]
    return ApiKey.issue(user=staff, name="root-ci")[1]


@pytest.fixture
def alice_api(alice_key: str) -> KeyClient:
    return KeyClient(alice_key)


@pytest.fixture
def bob_api(bob_key: str) -> KeyClient:
    return KeyClient(bob_key)


@pytest.fixture
def staff_api(staff_key: str) -> KeyClient:
    return KeyClient(staff_key)


@pytest.fixture
def make_snapshot() -> Callable[..., Snapshot]:
    """tests.factories.make_snapshot, as a fixture: the API tests take it as an argument."""
    return factories.make_snapshot


@pytest.fixture
def tiny_snapshot(tiny_model_path: Path, make_snapshot: Callable[..., Snapshot]) -> Snapshot:
    """The tiny model registered as a ready local model (the directory is in LOCAL_MODEL_ROOTS, so the cache
    service resolves its path like any registered local model)."""
    return make_snapshot(
        "test/tiny-chat",
        path=str(tiny_model_path),
        commit_sha="a" * 40,
        model_type="llama",
        context_length=512,
    )


@pytest.fixture
def long_snapshot(make_snapshot):  # type: ignore[no-untyped-def]
    """The tiny model with an 8k window: without max_tokens it would generate for several seconds."""
    from devkit.tinymodel import tiny_model_dir
    from tests.conftest import ROOT

    path = tiny_model_dir(ROOT / "var" / "test" / "models", max_position_embeddings=8192)
    return make_snapshot("test/tiny-long", path=str(path), commit_sha="b" * 40)


def error_of(response: Any) -> dict[str, Any]:
    """The API's error body, checked for shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    assert set(body["error"]) <= {"code", "message", "action", "details"}, body
    return body["error"]


def generated_schema() -> dict:
    """The schema as /api/schema/ serves it, generated in-process at collection time: schemathesis's lazy
    (fixture-based) loader does not work with pytest 9, and the operations must be known to parametrize."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    return json.loads(
        OpenApiJsonRenderer().render(
            SchemaGenerator().get_schema(request=None, public=True), "application/json"
        )
    )
