from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from dashboard.views import health

urlpatterns = [
    path("", include("dashboard.views.pages_urls")),
    path("chat/", include("dashboard.views.chat_urls")),
    path("health/", health.health_page, name="health"),
    path("healthz", health.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", include("models_app.api.urls")),
    path("v1/", include("models_app.openai.urls")),
]
