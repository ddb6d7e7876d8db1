from __future__ import annotations

from dashboard.consumers.routes import websocket_urlpatterns

__all__ = ["websocket_urlpatterns"]
