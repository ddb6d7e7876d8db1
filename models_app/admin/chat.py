"""Chat admin: conversations with their messages, and usage. Read-only: what was said and what it cost is a
record, not something to edit (conversations may still be deleted)."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from models_app.models import Conversation, Message, Usage


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class MessageInline(ReadOnlyMixin, admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = [
        "role",
        "status",
        "content",
        "error",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_second",
        "finish_reason",
        "created_at",
    ]
    readonly_fields = fields
    ordering = ["id"]
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["title", "user", "snapshot", "message_count", "updated_at", "created_at"]
    list_filter = [("updated_at", admin.DateFieldListFilter), "user"]
    search_fields = ["title", "user__username"]
    list_select_related = ["user", "snapshot__repository"]
    date_hierarchy = "updated_at"
    readonly_fields = ["user", "title", "snapshot", "system_prompt", "settings", "created_at", "updated_at"]
    inlines = [MessageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(n_messages=Count("messages"))  # one query per page

    @admin.display(description="Messages", ordering="n_messages")
    def message_count(self, obj: Conversation) -> int:
        return obj.n_messages  # type: ignore[attr-defined]


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "conversation",
        "role",
        "status",
        "short_content",
        "completion_tokens",
        "tokens_per_second",
        "finish_reason",
        "created_at",
    ]
    list_filter = ["role", "status", ("created_at", admin.DateFieldListFilter)]
    search_fields = ["content", "conversation__title", "conversation__user__username", "request_id"]
    list_select_related = ["conversation"]
    readonly_fields = [
        "conversation",
        "role",
        "status",
        "content",
        "error",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_second",
        "finish_reason",
        "request_id",
        "snapshot",
        "created_at",
    ]

    @admin.display(description="Content")
    def short_content(self, obj: Message) -> str:
        return obj.content[:80] + ("…" if len(obj.content) > 80 else "")


@admin.register(Usage)
class UsageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "source",
        "user",
        "api_key",
        "snapshot",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_second",
        "finish_reason",
    ]
    list_filter = ["source", ("created_at", admin.DateFieldListFilter), "finish_reason", "snapshot", "user"]
    search_fields = ["request_id", "user__username", "snapshot__repository__repo_id"]
    list_select_related = ["user", "api_key", "snapshot__repository"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "request_id",
        "user",
        "api_key",
        "snapshot",
        "source",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "ttft_ms",
        "tokens_per_second",
        "peak_memory_bytes",
        "finish_reason",
        "created_at",
    ]
