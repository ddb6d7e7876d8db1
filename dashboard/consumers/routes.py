"""Websocket URL patterns. Each consumer module adds its own line here."""

from __future__ import annotations

from django.urls import path

from dashboard.consumers.chat import ChatConsumer
from dashboard.consumers.downloads import DownloadsConsumer

websocket_urlpatterns: list = [
    path("ws/downloads/", DownloadsConsumer.as_asgi()),
    path("ws/chat/", ChatConsumer.as_asgi()),
]
