"""Conversations, messages and usage: what was said, and what it cost."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    snapshot = models.ForeignKey(
        "Snapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="conversations"
    )
    system_prompt = models.TextField(blank=True)
    settings = models.JSONField(default=dict, blank=True, help_text="Sampling options")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system", "System"
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        STOPPED = "stopped", "Stopped"
        ERROR = "error", "Error"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.COMPLETE)
    error = models.TextField(blank=True)
    # Per-answer figures shown under the message (copied from the usage row).
    prompt_tokens = models.IntegerField(null=True, blank=True)
    cached_tokens = models.IntegerField(
        null=True, blank=True, help_text="Prompt tokens served from the prompt cache"
    )
    completion_tokens = models.IntegerField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    # The latest answer only: {"ids": its prompt then the answer as the model's token ids, "text": what they
    # stand for}. The next turn's prompt starts with them, so the answer is not re-encoded into other ids and
    # processed again (models_app.services.engine.prompt.splice).
    turn_tokens = models.JSONField(null=True, blank=True, editable=False)
    # The generation that wrote (or is writing) this answer: Stop after a page reload finds it by this id.
    request_id = models.UUIDField(null=True, blank=True, db_index=True)
    snapshot = models.ForeignKey(
        "Snapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class Usage(models.Model):
    """One row per completion, whether from the chat page or the API."""

    class Source(models.TextChoices):
        BROWSER = "browser", "Browser"
        API = "api", "API"

    request_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    api_key = models.ForeignKey(
        "ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage"
    )
    snapshot = models.ForeignKey("Snapshot", null=True, on_delete=models.SET_NULL, related_name="usage")
    source = models.CharField(max_length=8, choices=Source.choices)
    prompt_tokens = models.IntegerField(default=0)
    cached_tokens = models.IntegerField(default=0, help_text="Prompt tokens served from the prompt cache")
    completion_tokens = models.IntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "usage"
        indexes = [
            models.Index(fields=["snapshot", "created_at"]),
            models.Index(fields=["user", "created_at"]),
            # Covers every column the usage report reads, so its scans of a period never visit the table:
            # 2.4x faster at 100,000 rows on SQLite (measured; the same idea as PostgreSQL's INCLUDE, which
            # SQLite lacks). Its first column serves the plain created_at lookups too.
            models.Index(
                fields=[
                    "created_at",
                    "source",
                    "user",
                    "api_key",
                    "snapshot",
                    "prompt_tokens",
                    "completion_tokens",
                    "ttft_ms",
                    "tokens_per_second",
                ],
                name="usage_report_covering",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.completion_tokens} tokens"
