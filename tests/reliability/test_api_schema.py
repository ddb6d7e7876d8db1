"""Schemathesis against the running server, positive mode: every REST operation answers as the OpenAPI schema
says (tests/api/test_schema.py checks the schema itself; the negative mode is in test_api_input.py).

The schema is generated in-process at collection time, and schemathesis builds its coverage-phase examples then
too: about half a minute per process. Living under tests/reliability, this module is not even imported by a run
whose -m leaves the reliability tests out (tests/conftest.py `pytest_ignore_collect`)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from models_app.models import ApiKey
from tests.api.conftest import generated_schema


@pytest.fixture
def fuzz_key(staff) -> str:  # type: ignore[no-untyped-def]
    """Staff, so the staff-only operations are exercised too."""
    return ApiKey.issue(user=staff, name="schemathesis")[1]


api_schema = schemathesis.openapi.from_dict(generated_schema())


# Left out: revoking keys (the fuzzer would revoke its own) and a real cleanup (it deletes from the cache the
# other tests share). Both have their own tests.
@pytest.mark.reliability
@pytest.mark.django_db(transaction=True)
@(
    api_schema.exclude(method="DELETE", path="/api/v1/keys/{id}")
    .exclude(method="POST", path="/api/v1/cache/cleanup")
    .parametrize()
)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_conforms_to_its_schema(
    case, asgi_server, fuzz_key: str, download_worker, inference_worker
) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(
        base_url=asgi_server.url, headers={"Authorization": f"Bearer {fuzz_key}"}, timeout=30
    )
