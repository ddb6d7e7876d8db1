"""`/v1/...`: the OpenAI-compatible API. Model ids contain a slash (org/name), hence the `path:` converter."""

from __future__ import annotations

from django.urls import path, re_path

from models_app.openai import views

urlpatterns = [
    path("models", views.models_list, name="openai-models"),
    path("models/<path:model_id>", views.model_detail, name="openai-model"),
    path("chat/completions", views.chat_completions, name="openai-chat-completions"),
    path("completions", views.completions, name="openai-completions"),
    re_path(r"^.*$", views.not_found),
]
