"""`/api/v1/...` (the REST API), `/api/schema/` (OpenAPI 3) and `/api/docs/` (Swagger UI, served offline)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import IsAuthenticated

from models_app.api import schema  # noqa: F401  (registers the API key auth scheme for the schema)
from models_app.api.errors import error_body
from models_app.api.views import cache, credentials, discover, health, keys, models, pulls, usage


def not_found(request: HttpRequest, *args: object, **kwargs: object) -> JsonResponse:
    """Unknown paths under /api/ answer in the API's error shape, not with the HTML 404 page."""
    return JsonResponse(error_body("not_found", "No such API endpoint."), status=404)


# Ids are captured as any path segment and parsed by the views: a malformed id is our 400, not a 404 page.
v1 = [
    path("models", models.ModelListView.as_view(), name="api-models"),
    path("models/<str:id>", models.ModelDetailView.as_view(), name="api-model"),
    path("models/<str:id>/verify", models.ModelVerifyView.as_view(), name="api-model-verify"),
    path("models/<str:id>/load", models.ModelLoadView.as_view(), name="api-model-load"),
    path("models/<str:id>/unload", models.ModelUnloadView.as_view(), name="api-model-unload"),
    path("pulls", pulls.PullListView.as_view(), name="api-pulls"),
    path("pulls/<str:id>", pulls.PullDetailView.as_view(), name="api-pull"),
    path("pulls/<str:id>/cancel", pulls.PullCancelView.as_view(), name="api-pull-cancel"),
    path("pulls/<str:id>/retry", pulls.PullRetryView.as_view(), name="api-pull-retry"),
    path("pulls/<str:id>/events", pulls.PullEventsView.as_view(), name="api-pull-events"),
    path("credentials", credentials.CredentialListView.as_view(), name="api-credentials"),
    path("credentials/<str:id>", credentials.CredentialDetailView.as_view(), name="api-credential"),
    path(
        "credentials/<str:id>/default",
        credentials.CredentialDefaultView.as_view(),
        name="api-credential-default",
    ),
    path("credentials/<str:id>/test", credentials.CredentialTestView.as_view(), name="api-credential-test"),
    path("cache", cache.CacheStatsView.as_view(), name="api-cache"),
    path("cache/cleanup", cache.CleanupView.as_view(), name="api-cache-cleanup"),
    path("usage", usage.UsageView.as_view(), name="api-usage"),
    path("discover", discover.DiscoverView.as_view(), name="api-discover"),
    path("discover/details", discover.DiscoverDetailsView.as_view(), name="api-discover-details"),
    path("health", health.HealthView.as_view(), name="api-health"),
    path("keys", keys.KeyListView.as_view(), name="api-keys"),
    path("keys/<str:id>", keys.KeyDetailView.as_view(), name="api-key"),
]

urlpatterns = [
    path("v1/", include(v1)),
    path(
        "schema/",
        SpectacularAPIView.as_view(permission_classes=[IsAuthenticated], urlconf=None),
        name="api-schema",
    ),
    path(
        "docs/",
        # The split view serves its start-up script as a file (?script): the CSP refuses inline scripts.
        SpectacularSwaggerSplitView.as_view(url_name="api-schema", permission_classes=[IsAuthenticated]),
        name="api-docs",
    ),
    re_path(r"^.*$", not_found),
]
