"""ASGI entry point: HTTP through Django (the API through its own handler, dashboard/api_handler.py), websockets
through Channels (origin-checked, authenticated)."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

# Django must be set up before the consumers (and the models they import) are imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from dashboard.api_handler import ApiHandler, is_api  # noqa: E402
from dashboard.routing import websocket_urlpatterns  # noqa: E402
from dashboard.ws_origin import SameOriginValidator  # noqa: E402

api_app = ApiHandler()


async def http_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    app = api_app if is_api(scope) else django_asgi_app
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        # The Origin must be this server's own origin or a CSRF-trusted one (Django's CSRF rule, ws_origin.py).
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
