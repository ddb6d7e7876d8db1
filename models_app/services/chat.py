"""Conversations and messages: what the chat page and its websocket consumer do, with the permission checks.

A user only ever sees their own conversations (anything else is "not found", never "forbidden": ids are not
confirmed to strangers), and only chats with ready snapshots they may see (Snapshot.objects.visible_to).
Posting a message saves it with an empty assistant message (status pending) and enqueues the generation;
the inference worker writes the answer into that message when it ends. The database is the truth: a page
that reconnects re-reads it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from models_app.models import Conversation, Message, Snapshot, Usage, UserLimits
from models_app.selectors.snapshots import snapshot_list
from models_app.services import catalog, inference, inflight, routing, workers
from models_app.services import redis as app_redis
from models_app.services.nodes import down_nodes

log = logging.getLogger(__name__)

MAX_CONTENT = 100_000  # characters in one message
MAX_SYSTEM_PROMPT = 20_000
MAX_TITLE = 200
DEFAULT_TITLE = "New chat"
IN_FLIGHT = (Message.Status.PENDING, Message.Status.STREAMING)


class ChatError(Exception):
    """Something the user did that cannot go on; `code` and the message go into an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found() -> ChatError:
    return ChatError("not_found", "This conversation does not exist.")


@dataclass(frozen=True)
class Started:
    request_id: str
    conversation_id: int
    user_message_id: int | None
    assistant_message_id: int
    snapshot_id: int
    title: str
    # The request's slot among the user's requests in flight: whoever relays the answer renews it and gives
    # it back when the answer ends (the chat consumer); unrenewed, it expires on its own.
    lease: inflight.Lease | None = field(default=None, compare=False)
    queue: str | None = None  # the inference queue it waits in (for its place in line)

    def payload(self) -> dict[str, Any]:
        return {
            "type": "chat.accepted",
            "request_id": self.request_id,
            "conversation_id": self.conversation_id,
            "user_message_id": self.user_message_id,
            "assistant_message_id": self.assistant_message_id,
            "snapshot_id": self.snapshot_id,
            "title": self.title,
        }


# --- Reading ---------------------------------------------------------------------------------------------------


# What a chat message reads before its rows are written, kept between messages while the catalog version holds
# (services/catalog.py): the snapshots a model reference names, and the user's limits.
_NAMED: catalog.Memo[list[Snapshot]] = catalog.Memo()
_LIMITS: catalog.Memo[tuple[int, int]] = catalog.Memo()


def usable_snapshots(user, *, include_down: bool = False) -> QuerySet[Snapshot]:  # type: ignore[no-untyped-def]
    """Ready snapshots the user may chat with, newest first within a repo; not those of a machine that is
    down unless `include_down` (to say why a chat cannot start)."""
    snapshots = snapshot_list(user=user, statuses=[Snapshot.Status.READY])
    return snapshots if include_down else snapshots.on_up_nodes()


def resolve_snapshot(  # type: ignore[no-untyped-def]
    user, ref: Any, *, include_down: bool = False, current: str | None = None
) -> Snapshot | None:
    """A snapshot id or a repo id (its newest ready snapshot), among those the user may use. The rows a
    reference names are kept under the catalog version `current` (None: read them); which machines are down
    is read each time."""
    if ref in (None, ""):
        return None
    text = str(ref).strip()

    def read() -> list[Snapshot] | None:
        # Not their file lists: kept rows stay small, and nothing on the way to the worker reads them.
        snapshots = usable_snapshots(user, include_down=True).defer("files", "missing_files")
        if text.isdigit():
            return list(snapshots.filter(id=int(text))) or None
        return list(snapshots.filter(repository__repo_id=text).order_by("-created_at")) or None

    named = _NAMED.get((user.pk, text), current, read) or []
    if not include_down and named:
        down = down_nodes(current)
        named = [snapshot for snapshot in named if snapshot.node not in down]
    return named[0] if named else None


def conversations_for(user) -> QuerySet[Conversation]:  # type: ignore[no-untyped-def]
    return Conversation.objects.filter(user=user).order_by("-updated_at")


def get_conversation(user, conversation_id: Any) -> Conversation:  # type: ignore[no-untyped-def]
    # The row alone: its model comes through resolve_snapshot's kept rows. Joining the snapshot and repository
    # rows (a snapshot's file list among them) cost every follow-up message 0.5-2.5 ms on its way to the worker.
    try:
        return Conversation.objects.get(id=int(conversation_id), user=user)
    except (Conversation.DoesNotExist, TypeError, ValueError):
        raise not_found() from None


# --- Conversations -----------------------------------------------------------------------------------------


def create_conversation(
    *, user, snapshot_id: Any = None, title: str = "", system_prompt: str = "", options: dict | None = None
) -> Conversation:  # type: ignore[no-untyped-def]
    snapshot = resolve_snapshot(user, snapshot_id)
    return Conversation.objects.create(
        user=user,
        title=_clean_title(title) or DEFAULT_TITLE,
        snapshot=snapshot,
        system_prompt=_clean_system_prompt(system_prompt),
        settings=_settings(options),
    )


def rename_conversation(*, user, conversation_id: Any, title: str) -> Conversation:  # type: ignore[no-untyped-def]
    conversation = get_conversation(user, conversation_id)
    title = _clean_title(title)
    if not title:
        raise ChatError("invalid_request", "A title cannot be empty.")
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def delete_conversation(*, user, conversation_id: Any) -> None:  # type: ignore[no-untyped-def]
    conversation = get_conversation(user, conversation_id)
    # Stop what is still generating for it: nobody will read those answers.
    for request_id in conversation.messages.filter(
        status__in=IN_FLIGHT, request_id__isnull=False
    ).values_list("request_id", flat=True):
        cancel_quietly(str(request_id))
    conversation.delete()


# --- Messages ----------------------------------------------------------------------------------------------


@workers.one_reading()
def post_message(
    *,
    user,  # type: ignore[no-untyped-def]
    conversation_id: Any,
    content: Any,
    reply_channel: str,
    snapshot_id: Any = None,
    options: Any = None,
    system_prompt: Any = None,
    hops: dict[str, int] | None = None,
) -> Started:
    """Save the user's message and an empty answer, and start generating it. With no conversation_id, a new
    conversation is created. `hops`: the request's timings so far (inference.stamp_hop). Raises ChatError
    (nothing is saved then)."""
    if not isinstance(content, str) or not content.strip():
        raise ChatError("invalid_request", "Type a message first.")
    if len(content) > MAX_CONTENT:
        raise ChatError("invalid_request", f"A message is limited to {MAX_CONTENT:,} characters.")
    clean_options = _options(options)
    # Before the rows it keeps them under (catalog.Memo); presence, which routing reads, comes with it.
    current = catalog.version(read=workers.get_with_presence)
    conversation = get_conversation(user, conversation_id) if conversation_id not in (None, "") else None
    snapshot = _pick_snapshot(user, snapshot_id, conversation, current)
    route = _route(user, snapshot)
    with _leased(user, current) as lease, transaction.atomic():
        if conversation is None:
            conversation = Conversation(user=user, title=DEFAULT_TITLE)
        conversation.snapshot = snapshot
        if system_prompt is not None:
            conversation.system_prompt = _clean_system_prompt(system_prompt)
        if options is not None:
            conversation.settings = _settings(clean_options)
        if conversation.title == DEFAULT_TITLE:
            conversation.title = _title_from(content) or DEFAULT_TITLE
        first_message = conversation.pk is None
        conversation.save()
        # The history read once, before the new rows: it says whether an answer is still being written, and
        # with the new message it is the request's (one statement fewer on the way to the first token).
        rows = [] if first_message else _history_rows(conversation)
        if any(row[0] == Message.Role.ASSISTANT and row[2] in IN_FLIGHT for row in rows):
            raise ChatError("busy", "Wait for the current answer to finish, or stop it.")
        user_message = Message.objects.create(
            conversation=conversation, role=Message.Role.USER, content=content
        )
        answer = _new_answer(conversation, route.snapshot, lease)
        rows.append((Message.Role.USER, content, user_message.status, None, None))
        messages = _checked(_history_of(conversation, rows))  # too large: all this is rolled back
    request_options = clean_options if options is not None else _stored_options(conversation)
    return _start(
        user,
        conversation,
        answer,
        route,
        request_options,
        reply_channel,
        messages=messages,
        lease=lease,
        user_message_id=user_message.id,
        hops=hops,
    )


@workers.one_reading()
def regenerate(*, user, conversation_id: Any, reply_channel: str, options: Any = None) -> Started:  # type: ignore[no-untyped-def]
    """Replace the last answer with a new one."""
    current = catalog.version(read=workers.get_with_presence)
    conversation = get_conversation(user, conversation_id)
    clean_options = _options(options) if options is not None else _stored_options(conversation)
    snapshot = _pick_snapshot(user, None, conversation, current)
    route = _route(user, snapshot)
    with _leased(user, current) as lease, transaction.atomic():
        rows = list(conversation.messages.defer("turn_tokens").order_by("id"))
        if any(m.role == Message.Role.ASSISTANT and m.status in IN_FLIGHT for m in rows):
            raise ChatError("busy", "Wait for the current answer to finish, or stop it.")
        while rows and rows[-1].role == Message.Role.ASSISTANT:
            rows.pop().delete()
        if not rows:
            raise ChatError("invalid_request", "There is no message to answer yet.")
        answer = _new_answer(conversation, route.snapshot, lease)
        messages = _checked(_history_of(conversation, _history_rows(conversation, before=answer.id)))
        conversation.save(update_fields=["updated_at"])
    return _start(
        user,
        conversation,
        answer,
        route,
        clean_options,
        reply_channel,
        messages=messages,
        lease=lease,
        user_message_id=None,
    )


@contextlib.contextmanager
def _leased(user, current: str | None) -> Iterator[inflight.Lease]:  # type: ignore[no-untyped-def]
    """A slot among the user's requests in flight (chat and API together) for a new answer, given back if
    the answer is not started after all. Taken before anything is saved: a refused message loses nothing.
    The user's limits are kept under the catalog version `current`."""
    limits = _LIMITS.get(user.id, current, lambda: UserLimits.for_user(user.id))
    try:
        lease = inflight.acquire(str(uuid.uuid4()), inflight.scopes_for(user.id, limits=limits))
    except inflight.LimitReached as exc:
        raise ChatError(
            "too_many_requests",
            f"You already have {exc.scope.limit} answers being written (chat and API together); wait for one "
            "to finish, or stop one.",
        ) from None
    try:
        yield lease
    except BaseException:
        inflight.release(lease)
        raise


def _checked(history: History) -> History:
    try:
        inference.check_request_size(messages=history.messages)
    except inference.RequestTooLarge as exc:
        raise ChatError("invalid_request", f"{exc}") from exc
    return history


def stop(*, user, request_id: Any) -> bool:  # type: ignore[no-untyped-def]
    """Stop a generation of one of the user's own answers. Returns whether there was one to stop."""
    try:
        request_uuid = uuid.UUID(str(request_id))
    except ValueError:
        return False
    owned = Message.objects.filter(request_id=request_uuid, conversation__user=user, status__in=IN_FLIGHT)
    if not owned.exists():
        return False
    cancel_quietly(str(request_uuid))
    return True


def fail_answer(*, request_id: str, code: str, message: str) -> None:
    """The web side gave up on a request (no worker, worker died): the answer says so, unless the worker
    finished it after all."""
    Message.objects.filter(request_id=request_id, status__in=IN_FLIGHT).update(
        status=Message.Status.ERROR, error=message, finish_reason=code
    )


def reconcile_pending(conversation: Conversation) -> None:
    """Answers left pending by a page that went away while their worker died (or never took them) would
    stay "generating" forever: the web side that watched them is gone. Settle them when the page is read.
    Costs Redis calls only when the conversation has an answer in flight."""
    pending = list(conversation.messages.filter(status__in=IN_FLIGHT, request_id__isnull=False))
    if not pending:
        return
    try:
        live = {w.hostname for w in workers.workers_for_queue(inference.QUEUE)}
        picked = app_redis.client().mget([inference.picked_key(str(m.request_id)) for m in pending])
    except redis.RedisError:
        return
    now = timezone.now()
    grace = dt.timedelta(seconds=max(30.0, 2 * settings.INFERENCE_PICKUP_TIMEOUT))
    for message, worker in zip(pending, picked, strict=True):
        age = now - message.created_at
        if worker and worker not in live:
            code, text = inference.WORKER_DIED, "The inference worker stopped while writing this answer."
        elif not worker and not live and age > grace:
            code, text = inference.NO_WORKER, "No inference worker picked up this request."
        elif not worker and age > dt.timedelta(seconds=inference.QUEUE_EXPIRY + 60):
            code, text = inference.NO_WORKER, "The request expired before a worker took it."
        else:
            continue
        fail_answer(request_id=str(message.request_id), code=code, message=text)


def history(conversation: Conversation) -> list[Message]:
    # Each answer names the model that wrote it: one join, whatever the length of the history.
    # Not turn_tokens: the prompt of the latest answer as token ids, for the worker only.
    return list(
        conversation.messages.select_related("snapshot__repository").defer("turn_tokens").order_by("id")
    )


def message_figures(message: Message) -> dict[str, Any]:
    return {
        "prompt_tokens": message.prompt_tokens,
        "cached_tokens": message.cached_tokens,
        "completion_tokens": message.completion_tokens,
        "ttft_ms": message.ttft_ms,
        "tokens_per_second": message.tokens_per_second,
        "finish_reason": message.finish_reason,
    }


# --- Internals ---------------------------------------------------------------------------------------------


def _start(
    user,  # type: ignore[no-untyped-def]
    conversation: Conversation,
    answer: Message,
    route: routing.Route,
    options: dict[str, Any],
    reply_channel: str,
    *,
    messages: History,
    lease: inflight.Lease,
    user_message_id: int | None,
    hops: dict[str, int] | None = None,
) -> Started:
    snapshot = route.snapshot
    request = {
        "request_id": str(answer.request_id),
        "reply_channel": reply_channel,
        "snapshot_id": snapshot.id,
        "messages": messages.messages,
        "options": options,
        "user_id": user.id,
        "api_key_id": None,
        "source": Usage.Source.BROWSER,
        "assistant_message_id": answer.id,
    }
    if previous_turn := messages.turn_for(snapshot):
        request["previous_turn"] = previous_turn
    if hops:
        request["hops"] = dict(hops)
    try:
        queue = inference.start_generation(request, queue=route.queue)
    except inference.InferenceUnavailable as exc:
        inflight.release(lease)
        fail_answer(request_id=str(answer.request_id), code=exc.code, message=str(exc))
        raise ChatError(exc.code, str(exc)) from exc
    return Started(
        request_id=str(answer.request_id),
        conversation_id=conversation.id,
        user_message_id=user_message_id,
        assistant_message_id=answer.id,
        snapshot_id=snapshot.id,
        title=conversation.title,
        lease=lease,
        queue=queue,
    )


def _new_answer(conversation: Conversation, snapshot: Snapshot, lease: inflight.Lease) -> Message:
    return Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING,
        request_id=uuid.UUID(lease.request_id),
        snapshot=snapshot,
    )


@dataclass
class History:
    messages: list[dict[str, str]]
    # The latest answer's prompt and answer as token ids (Message.turn_tokens), and the model that wrote them.
    previous_turn: dict[str, Any] | None = None
    previous_snapshot_id: int | None = None

    def turn_for(self, snapshot: Snapshot) -> dict[str, Any] | None:
        """Token ids mean something to the model that wrote them only."""
        return self.previous_turn if self.previous_snapshot_id == snapshot.id else None


HistoryRow = tuple[str, str, str, Any, int | None]  # role, content, status, turn_tokens, snapshot_id


def _history_rows(conversation: Conversation, *, before: int | None = None) -> list[HistoryRow]:
    """The conversation's messages (those before the message `before`), oldest first."""
    messages = conversation.messages.all() if before is None else conversation.messages.filter(id__lt=before)
    return list(
        messages.order_by("id").values_list("role", "content", "status", "turn_tokens", "snapshot_id")
    )


def _history_of(conversation: Conversation, rows: list[HistoryRow]) -> History:
    """The conversation as the model sees it: the system prompt, then every user message and every answer
    that has text (a failed answer is left out). Consecutive messages of one role are merged, since many
    chat templates insist that roles alternate."""
    result: list[dict[str, str]] = []
    history = History(result)
    if conversation.system_prompt.strip():
        result.append({"role": "system", "content": conversation.system_prompt})
    for role, content, status, turn_tokens, snapshot_id in rows:
        if role == Message.Role.ASSISTANT and (
            status in IN_FLIGHT or status == Message.Status.ERROR or not content
        ):
            continue
        if turn_tokens:
            history.previous_turn, history.previous_snapshot_id = turn_tokens, snapshot_id
        if result and result[-1]["role"] == role and role != "system":
            result[-1] = {"role": role, "content": f"{result[-1]['content']}\n\n{content}"}
        else:
            result.append({"role": role, "content": content})
    return history


def _pick_snapshot(  # type: ignore[no-untyped-def]
    user, snapshot_id: Any, conversation: Conversation | None, current: str | None = None
) -> Snapshot:
    ref = (
        snapshot_id if snapshot_id not in (None, "") else (conversation.snapshot_id if conversation else None)
    )
    snapshot = resolve_snapshot(user, ref, current=current)
    if snapshot is None:
        if (held := resolve_snapshot(user, ref, include_down=True)) is not None:
            raise ChatError(
                "node_down",
                f"{held.repository.repo_id} is on machine {held.node}, which is down (its workers stopped): "
                "pick a model of a running machine, or start that machine's workers.",
            )
        raise ChatError("model_unavailable", "Pick a model that is downloaded and ready.")
    return snapshot


def _route(user, snapshot: Snapshot) -> routing.Route:  # type: ignore[no-untyped-def]
    """The machine that answers: the one holding this commit that has it loaded, else the least busy (the
    same commit on another machine counts). Checked before anything is saved: a user whose request cannot run
    keeps their text, and a machine that is down is named at once, not after a pickup timeout."""
    try:
        route = routing.route_snapshot(snapshot, user)
        inference.ensure_worker(route.queue)
    except inference.InferenceUnavailable as exc:
        raise ChatError(exc.code, str(exc)) from exc
    return route


def _options(options: Any) -> dict[str, Any]:
    try:
        return inference.normalize_options(options)
    except inference.InvalidOptions as exc:
        raise ChatError("invalid_request", str(exc)) from exc


def _stored_options(conversation: Conversation) -> dict[str, Any]:
    try:
        return inference.normalize_options(conversation.settings or {})
    except inference.InvalidOptions:
        return {}


def _settings(options: dict[str, Any] | None) -> dict[str, Any]:
    # Tools are an API matter; the page's settings are sampling only.
    return {k: v for k, v in (options or {}).items() if k != "tools"}


def _clean_title(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text or "")).strip()[:MAX_TITLE]


def _title_from(content: str) -> str:
    """A new conversation is named after the start of its first message."""
    title = _clean_title(content)
    return title if len(title) <= 60 else title[:59].rstrip() + "…"


def _clean_system_prompt(text: Any) -> str:
    text = str(text or "")
    if len(text) > MAX_SYSTEM_PROMPT:
        raise ChatError(
            "invalid_request", f"The system prompt is limited to {MAX_SYSTEM_PROMPT:,} characters."
        )
    return text


def cancel_quietly(request_id: str) -> None:
    try:
        inference.cancel_generation(request_id)
    except Exception as exc:  # Redis away: the generation runs to its end; nothing else breaks
        log.warning("could not cancel %s: %s", request_id, exc)
