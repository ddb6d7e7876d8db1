"""The chat page (included at "chat/")."""

from __future__ import annotations

from django.urls import path

from dashboard.views import chat

urlpatterns = [
    path("", chat.chat_page, name="chat"),
    path("<int:conversation_id>/", chat.chat_page, name="chat_conversation"),
    path("<int:conversation_id>/messages/", chat.chat_messages, name="chat_messages"),
    path("<int:conversation_id>/rename/", chat.chat_rename, name="chat_rename"),
    path("<int:conversation_id>/delete/", chat.chat_delete, name="chat_delete"),
]
