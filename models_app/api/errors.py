"""One error body for the whole automation API: {"error": {"code", "message", "action"?, "details"?}}."""

from __future__ import annotations

from typing import Any

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = getattr(exc, "default_code", "error")
    detail = response.data
    if isinstance(detail, dict) and "detail" in detail and len(detail) == 1:
        message, details = str(detail["detail"]), None
    else:
        message, details = "The request is not valid.", detail
        code = "invalid" if code == "invalid" else code
    body: dict[str, Any] = {"error": {"code": str(code), "message": message}}
    if details is not None:
        body["error"]["details"] = details
    response.data = body
    return response
