"""The OpenAPI schema: valid OpenAPI 3, accurate (schemathesis checks the running API against it in
tests/reliability/test_api_schema.py), and the Swagger UI served without any CDN."""

from __future__ import annotations

import pytest
from drf_spectacular.validation import validate_schema

from tests.api.conftest import KeyClient, generated_schema

pytestmark = pytest.mark.django_db


def test_the_schema_is_valid_openapi_3(alice_api: KeyClient, client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/schema/").status_code in (401, 403)  # every endpoint needs auth, this one too
    response = alice_api.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)  # raises on anything that is not OpenAPI 3.0
    assert schema == generated_schema()  # what the fuzz test below runs against
    assert schema["openapi"].startswith("3.0")
    paths = schema["paths"]
    for path in (
        "/api/v1/models",
        "/api/v1/models/{id}",
        "/api/v1/pulls",
        "/api/v1/pulls/{id}/events",
        "/api/v1/credentials",
        "/api/v1/cache/cleanup",
        "/api/v1/usage",
        "/api/v1/health",
        "/api/v1/keys/{id}",
    ):
        assert path in paths, path
    # Error bodies, request bodies and the write-only token are described.
    assert paths["/api/v1/pulls"]["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert "requestBody" in paths["/api/v1/pulls"]["post"]
    components = schema["components"]["schemas"]
    assert "token" in components["CredentialRequest"]["properties"]
    assert "token" not in components["Credential"]["properties"]
    assert (
        "key" in components["ApiKeyCreated"]["properties"] and "key" not in components["ApiKey"]["properties"]
    )
    assert set(schema["components"]["securitySchemes"]) == {"apiKey", "cookieAuth"}
    assert "text/event-stream" in paths["/api/v1/pulls/{id}/events"]["get"]["responses"]["200"]["content"]


def test_swagger_ui_works_offline(alice_client) -> None:  # type: ignore[no-untyped-def]
    page = alice_client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui" in html and "cdn.jsdelivr" not in html and "unpkg" not in html
    bundle = html.split('src="', 2)[1].split('"', 1)[0]
    assert bundle.startswith("/static/")
    assert alice_client.get(bundle).status_code == 200


@pytest.mark.parametrize(
    "query", ["author=%20", "author=mlx-community%20", "cursor=%20", "cursor=%20abc", "author=%C2%A0"]
)
def test_discover_refuses_what_its_patterns_refuse_even_when_trimming_would_pass_it(
    alice_api: KeyClient, query: str
) -> None:
    """Schemathesis sent author=" ": DRF trimmed it to "" (allowed blank) while the schema's oneOf refuses it."""
    response = alice_api.get(f"/api/v1/discover?{query}")
    assert response.status_code == 400, response.content
