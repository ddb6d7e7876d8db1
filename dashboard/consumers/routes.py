"""Websocket URL patterns. Each consumer module adds its own line here."""

from __future__ import annotations

websocket_urlpatterns: list = []
