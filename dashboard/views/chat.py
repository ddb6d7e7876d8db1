"""The chat page: conversations on the left, the selected one with its history, the composer. Messages are
sent and streamed over the `ws/chat/` socket (dashboard/consumers/chat.py); these views render from the
database, which is the truth, and handle the conversation list's forms (rename, delete)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from models_app.models import Conversation, Message, UserPreferences
from models_app.services import chat, inference

CONVERSATIONS_SHOWN = 100
# Every option the page shows, blank (the engine's default applies to a blank field).
BLANK_SETTINGS = {
    "temperature": None,
    "top_p": None,
    "top_k": None,
    "min_p": None,
    "repetition_penalty": None,
    "max_tokens": None,
    "seed": None,
    "stop": [],
}


def _conversation(request: HttpRequest, conversation_id: int) -> Conversation:
    try:
        return chat.get_conversation(request.user, conversation_id)
    except chat.ChatError:
        raise Http404("No such conversation") from None


@login_required
def chat_page(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    conversation = _conversation(request, conversation_id) if conversation_id is not None else None
    if conversation is not None:
        chat.reconcile_pending(conversation)
    snapshots = list(chat.usable_snapshots(request.user).order_by("repository__repo_id", "-created_at"))
    selected = (
        chat.resolve_snapshot(request.user, request.GET.get("model")) if request.GET.get("model") else None
    )
    if selected is None and conversation is not None and conversation.snapshot_id:
        selected = next((s for s in snapshots if s.id == conversation.snapshot_id), None)
    if selected is None and snapshots:
        selected = snapshots[0]
    if conversation is not None:
        # What this conversation was sent with: a field left blank then stays blank.
        settings = {**BLANK_SETTINGS, **conversation.settings}
        system_prompt = conversation.system_prompt
    else:
        # A new chat starts from the user's saved defaults (Settings page), else the built-in ones.
        defaults = UserPreferences.generation_defaults(request.user)
        system_prompt = defaults.pop("system_prompt")
        settings = {**BLANK_SETTINGS, **defaults}
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": conversation,
            "conversations": chat.conversations_for(request.user)[:CONVERSATIONS_SHOWN],
            "history": chat.history(conversation) if conversation else [],
            "snapshots": snapshots,
            "selected": selected,
            "settings": settings,
            "system_prompt": system_prompt,
            "default_temperature": inference.DEFAULT_TEMPERATURE,
            "stop_text": "\n".join(settings.get("stop") or []),
            "model_missing": conversation is not None and conversation.snapshot_id is None,
        },
    )


@login_required
def chat_messages(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """The conversation as JSON: the page re-reads it after a reconnect, and while an answer started from
    another page is still being generated."""
    conversation = _conversation(request, conversation_id)
    chat.reconcile_pending(conversation)
    return JsonResponse(
        {
            "conversation": {"id": conversation.id, "title": conversation.title},
            "messages": [_message_json(m) for m in chat.history(conversation)],
        }
    )


def _message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "error": message.error,
        "request_id": str(message.request_id) if message.request_id else None,
        "figures": chat.message_figures(message),
        "model": message.snapshot.repository.repo_id if message.snapshot else None,
    }


@login_required
@require_POST
def chat_rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        chat.rename_conversation(
            user=request.user, conversation_id=conversation_id, title=request.POST.get("title", "")
        )
    except chat.ChatError as exc:
        if exc.code == "not_found":
            raise Http404("No such conversation") from None
        messages.error(request, exc.message)
    return redirect("chat_conversation", conversation_id=conversation_id)


@login_required
@require_POST
def chat_delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    try:
        chat.delete_conversation(user=request.user, conversation_id=conversation_id)
    except chat.ChatError:
        raise Http404("No such conversation") from None
    messages.success(request, "Conversation deleted.")
    return redirect(reverse("chat"))
