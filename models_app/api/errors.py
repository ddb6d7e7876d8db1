"""One error body for the whole automation API: {"error": {"code", "message", "action"?, "details"?}}.

Services raise their own errors (DownloadError, CacheError, ...) with a stable `code`, a `message` and maybe an
`action`; this handler turns them into that body with the HTTP status their code means (the one table in
`services/errors.py`), so views never translate errors one by one."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from models_app.services.apikeys import ApiKeyError
from models_app.services.cache_layout import CacheError
from models_app.services.errors import DownloadError, http_status

log = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error raised by a view, in the same shape as service errors."""

    def __init__(self, code: str, message: str, *, action: str = "") -> None:
        super().__init__(detail=message, code=code)
        self.code = code
        self.message = message
        self.action = action
        self.status_code = http_status(code)


# The service exceptions whose `code`, `message` and `action` this handler turns into the error body.
SERVICE_ERRORS: tuple[type[Exception], ...] = (DownloadError, CacheError, ApiKeyError)


def error_body(code: str, message: str, action: str = "", details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if action:
        body["action"] = action
    if details is not None:
        body["details"] = details
    return {"error": body}


def service_error_response(exc: Exception) -> Response:
    code = str(getattr(exc, "code", "") or "invalid")
    message = str(getattr(exc, "message", "") or exc)
    action = str(getattr(exc, "action", "") or "")
    return Response(error_body(code, message, action), status=http_status(code))


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        response = Response(error_body(exc.code, exc.message, exc.action), status=exc.status_code)
        return response
    if not isinstance(exc, exceptions.APIException | Http404 | PermissionDenied):
        if isinstance(exc, SERVICE_ERRORS):
            return service_error_response(exc)
        return None  # a bug: Django's 500 handling, never a traceback in the body (DEBUG is off)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, Http404):
        code = "not_found"
    elif isinstance(exc, PermissionDenied):
        code = "permission_denied"
    detail = response.data
    if isinstance(detail, dict) and "detail" in detail and len(detail) == 1:
        message, details = str(detail["detail"]), None
    else:
        message, details = "The request is not valid.", detail
    response.data = error_body(str(code), message, details=details)
    return response
