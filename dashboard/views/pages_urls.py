from __future__ import annotations

from django.urls import path

from dashboard.views import health

urlpatterns = [
    path("", health.overview, name="overview"),
]
