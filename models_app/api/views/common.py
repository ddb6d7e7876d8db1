"""Shared pieces of the REST views: id parsing, visibility lookups and the documented error responses."""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import generics
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from models_app.api.errors import ApiError
from models_app.api.pagination import BoundedLimitOffsetPagination
from models_app.api.serializers import ErrorSerializer

# Ids are database integers: anything else (or beyond 64 bits, which SQLite would refuse with a 500) is a 400.
MAX_ID = 2**63 - 1

_ERROR_TEXT = {
    400: "Invalid request (e.g. invalid_id, invalid_repo_id).",
    401: "Missing, invalid or revoked credentials (authentication_failed, not_authenticated).",
    403: "Not allowed (permission_denied, forbidden, gated).",
    404: "Not found, or not visible to this user (not_found).",
    409: "Conflicts with the current state (in_use, not_active...).",
    422: "The repository is not a model mlx-lm can load (not_mlx).",
    503: "A worker or service this needs is not running.",
}


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Documented error responses; 401 is always there (every endpoint needs auth)."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=_ERROR_TEXT.get(status, "Error."))
        for status in sorted({401, *statuses})
    }


def id_parameter(name: str = "id", description: str = "") -> OpenApiParameter:
    return OpenApiParameter(
        name,
        {"type": "integer", "minimum": 1, "maximum": MAX_ID, "format": "int64"},
        OpenApiParameter.PATH,
        description=description or f"The {name}",
    )


def parse_id(value: Any, what: str = "id") -> int:
    try:
        number = int(str(value), 10)
    except (TypeError, ValueError):
        raise ApiError("invalid_id", f"The {what} must be a positive integer.") from None
    if not 1 <= number <= MAX_ID:
        raise ApiError("invalid_id", f"The {what} must be a positive integer.")
    return number


def get_visible(queryset: QuerySet, raw_id: Any, what: str) -> Model:
    """The row with this id among those the user may see; 404 for others, so ids reveal nothing."""
    obj = queryset.filter(pk=parse_id(raw_id, f"{what} id")).first()
    if obj is None:
        raise ApiError("not_found", f"No {what} with this id.")
    return obj


class SafeJSONParser(JSONParser):
    """JSON nested deeper than Python's recursion limit (a few kB of `[[[[`) is the client's error, a 400: the
    plain JSONParser lets the RecursionError through as a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None


# Base of the API's views: bounded pagination; ids are parsed by `parse_id` (URLs capture any segment, so a
# malformed id gets our 400, not Django's HTML 404). No docstring: the schema would show it on every operation.
class ApiView(generics.GenericAPIView):
    # JSON bodies only: an automation API, and one request format to document and validate.
    parser_classes = [SafeJSONParser]
    pagination_class = BoundedLimitOffsetPagination
    lookup_url_kwarg = "id"
