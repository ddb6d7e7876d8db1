"""Limit/offset pagination that refuses what it cannot honour: DRF's silently ignores a malformed limit, and an
offset beyond what a database integer holds would be a 500."""

from __future__ import annotations

from typing import Any

from rest_framework.pagination import LimitOffsetPagination

from models_app.api.errors import ApiError

MAX_OFFSET = 2**31 - 1


def _parse(request: Any, name: str, *, minimum: int, maximum: int, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise ApiError("invalid", f"'{name}' must be an integer.") from None
    if not minimum <= value <= maximum:
        raise ApiError("invalid", f"'{name}' must be between {minimum} and {maximum}.")
    return value


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500

    def get_limit(self, request: Any) -> int:
        return _parse(
            request, self.limit_query_param, minimum=1, maximum=self.max_limit, default=self.default_limit
        )

    def get_offset(self, request: Any) -> int:
        return _parse(request, self.offset_query_param, minimum=0, maximum=MAX_OFFSET, default=0)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_limit)
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"].update(minimum=0, maximum=MAX_OFFSET)
        return parameters
