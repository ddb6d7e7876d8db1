"""Content-Security-Policy on every response (Django 5.2 has none built in; 6.0 will).

The pages load only their own vendored scripts and styles, so the policy allows nothing else: no inline
script, no inline <style>, no eval, no other origin. Style attributes are not allowed either: bar widths and
chart styles are set through the DOM (element.style), which CSP permits. 'self' in connect-src covers the
page's own websockets (ws:/wss: on the same host and port, CSP level 3).
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

HEADER = "Content-Security-Policy"

DEFAULT_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Sets settings.CONTENT_SECURITY_POLICY (empty: no header) unless the view set its own."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        policy = settings.CONTENT_SECURITY_POLICY
        if policy and HEADER not in response:
            response[HEADER] = policy
        return response
