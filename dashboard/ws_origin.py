"""The websocket Origin check: the same rule Django's CSRF protection applies to unsafe HTTP requests.

Channels' AllowedHostsOriginValidator compares the Origin's host with ALLOWED_HOSTS only, so any scheme and any
port of an allowed host passed: a page served from http://127.0.0.1:9107 could open the product's sockets on
http://127.0.0.1:8103 with the visitor's session cookie. Here the Origin must be exactly the request's own
origin (scheme, host, port, as Django sees it: SECURE_PROXY_SSL_HEADER, USE_X_FORWARDED_HOST/PORT and
ALLOWED_HOSTS included) or one of CSRF_TRUSTED_ORIGINS. A missing, repeated or unreadable Origin is refused.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.http.request import is_same_domain

_HTTP_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _trusted(origin: str) -> bool:
    """CSRF_TRUSTED_ORIGINS as CsrfViewMiddleware reads it: exact origins, and `scheme://*.domain` wildcards."""
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        if "*" not in trusted:
            continue
        pattern = urlsplit(trusted)
        if pattern.scheme == parsed.scheme and is_same_domain(parsed.netloc, pattern.netloc.lstrip("*")):
            return True
    return False


def request_origin(scope: dict[str, Any]) -> str | None:
    """`scheme://host[:port]` of the server as Django computes it for an HTTP request; None for a host that
    ALLOWED_HOSTS refuses."""
    http_scope = {
        **scope,
        "type": "http",
        "method": "GET",
        "scheme": _HTTP_SCHEME.get(scope.get("scheme", "")),
    }
    request = ASGIRequest(http_scope, io.BytesIO())
    try:
        host = request.get_host()
    except DisallowedHost:
        return None
    return f"{'https' if request.is_secure() else 'http'}://{host}"


def origin_allowed(scope: dict[str, Any]) -> bool:
    origins = [value for name, value in scope.get("headers", []) if name.lower() == b"origin"]
    if len(origins) != 1:
        return False
    try:
        origin = origins[0].decode("ascii")
    except UnicodeDecodeError:
        return False
    return origin == request_origin(scope) or _trusted(origin)


class SameOriginValidator:
    """ASGI middleware for websockets: refuse the handshake (403) unless `origin_allowed`."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator only guards websocket connections")
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
