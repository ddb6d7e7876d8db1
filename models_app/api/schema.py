"""OpenAPI details drf-spectacular cannot infer (how API keys authenticate; registered by importing this module,
which urls.py does before any schema is generated)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "models_app.api.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "mlxcr_<prefix>_<secret>",
            "description": "An API key from Settings or `manage.py apikey create`; it acts as its user.",
        }
