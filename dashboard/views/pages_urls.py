"""The dashboard pages (included at "")."""

from __future__ import annotations

from django.urls import path

from dashboard.views import cache, discover, downloads, models, overview, pull, settings_pages, usage

urlpatterns = [
    path("", overview.overview, name="overview"),
    path("models/", models.model_list, name="models"),
    path("models/<int:pk>/", models.model_detail, name="model_detail"),
    path("models/<int:pk>/verify/", models.model_verify, name="model_verify"),
    path("models/<int:pk>/update/", models.model_update, name="model_update"),
    path("models/<int:pk>/delete/", models.model_delete, name="model_delete"),
    path("models/<int:pk>/load/", models.model_load, name="model_load"),
    path("models/<int:pk>/unload/", models.model_unload, name="model_unload"),
    path("pull/", pull.pull, name="pull"),
    path("discover/", discover.discover_page, name="discover"),
    path("downloads/", downloads.download_list, name="downloads"),
    path("downloads/<int:pk>/cancel/", downloads.download_cancel, name="download_cancel"),
    path("downloads/<int:pk>/retry/", downloads.download_retry, name="download_retry"),
    path("cache/", cache.cache_page, name="cache"),
    path("usage/", usage.usage_page, name="usage"),
    path("settings/", settings_pages.settings_page, name="settings"),
    path("settings/credentials/", settings_pages.credential_add, name="credential_add"),
    path("settings/credentials/<int:pk>/test/", settings_pages.credential_test, name="credential_test"),
    path(
        "settings/credentials/<int:pk>/default/", settings_pages.credential_default, name="credential_default"
    ),
    path("settings/credentials/<int:pk>/delete/", settings_pages.credential_delete, name="credential_delete"),
    path("settings/keys/", settings_pages.apikey_create, name="apikey_create"),
    path("settings/keys/new/", settings_pages.apikey_created, name="apikey_created"),
    path("settings/keys/<int:pk>/revoke/", settings_pages.apikey_revoke, name="apikey_revoke"),
    path("settings/defaults/", settings_pages.defaults_save, name="defaults_save"),
]
