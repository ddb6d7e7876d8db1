"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions.

Async views on the same path as the chat page (DESIGN.md, "Inference and chat"): open a channel, enqueue the
generation on the inference queue, turn the worker's chat.* messages into OpenAI objects. Nothing here loads
a model. Auth is an API key only (`Authorization: Bearer mlxcr_...`), so the views are CSRF-exempt: no cookie
is ever read."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from models_app.api.auth import active_key, bearer_token, touch
from models_app.models import ApiKey, Snapshot, UserLimits
from models_app.openai import schemas
from models_app.openai.parsing import NO_MARKERS, Markers, StreamParser
from models_app.openai.sse import KEEPALIVE, Completion, data, error_object
from models_app.selectors.snapshots import ModelInfo, model_list, snapshot_list
from models_app.services import cache, catalog, chat, inference, inflight, model_markers, routing, workers
from models_app.services.nodes import down_nodes

log = logging.getLogger(__name__)

# SSE comments while the prompt is processed, so proxies and clients do not time out (mlx_lm.server does too).
KEEPALIVE_SECONDS = 5.0

# chat.error codes from the worker (and the web side's watch) -> HTTP status and OpenAI error type.
ERROR_STATUS: dict[str, tuple[int, str]] = {
    "context_too_long": (400, "invalid_request_error"),
    "invalid_request": (400, "invalid_request_error"),
    "model_load_failed": (500, "server_error"),
    "no_worker": (503, "server_error"),
    "node_down": (503, "server_error"),
    "worker_died": (503, "server_error"),
    "cancelled": (500, "server_error"),
    "internal": (500, "server_error"),
}
ERROR_CODE_NAMES = {"context_too_long": "context_length_exceeded"}

# A request body (JSON, parsed) to the request it stands for: schemas.parse_chat or parse_completion.
Parse = Callable[[dict[str, Any]], schemas.CompletionRequest]


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> JsonResponse:
    response = JsonResponse(error_object(message, type=type, code=code, param=param), status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


# --- Auth ------------------------------------------------------------------------------------------------------


# The key and the model's snapshot rows, kept between requests while the catalog does not change
# (services/catalog.py: a revoked key, a deactivated user, a pulled or deleted model change it).
_KEYS: catalog.Memo[ApiKey] = catalog.Memo()
_SNAPSHOTS: catalog.Memo[list[Snapshot]] = catalog.Memo()


def _active_key(authorization: str, current: str | None) -> ApiKey | None:
    """The active API key of an Authorization header, or None; kept under the catalog version `current`
    (catalog.version(), read before), so a revoked key fails at once. Blocking (the database, Redis)."""
    raw = bearer_token(authorization)
    if raw is None:
        return None
    key = _KEYS.get(ApiKey.hash(raw), current, lambda: active_key(raw))
    if key is not None:
        touch(key)
    return key


def _request_key(authorization: str) -> ApiKey | None:
    return _active_key(authorization, catalog.version())


async def authenticate(request: HttpRequest) -> ApiKey | None:
    """The request's active API key, or None. The database work runs in Django's sync thread (the ORM is not
    async-safe)."""
    return await sync_to_async(_request_key)(request.headers.get("Authorization", ""))


def _unauthorized() -> JsonResponse:
    return error_response(
        401,
        "Invalid, revoked or missing API key. Send `Authorization: Bearer mlxcr_...` with a key from "
        "Settings or `manage.py apikey create`.",
        code="invalid_api_key",
    )


def accepts(*methods: str) -> Callable:
    """Method check for an async API view (405 otherwise); key auth is the view's own (see endpoint)."""

    def wrap(view: Callable[..., Awaitable[HttpResponse]]) -> Callable[..., Awaitable[HttpResponse]]:
        @csrf_exempt
        async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error_response(
                    405, f"Use {' or '.join(methods)} for this endpoint.", code="method_not_allowed"
                )
                response["Allow"] = ", ".join(methods)
                return response
            return await view(request, *args, **kwargs)

        wrapped.__name__ = view.__name__
        wrapped.__doc__ = view.__doc__
        return wrapped

    return wrap


def endpoint(*methods: str) -> Callable:
    """Method check and key auth for an async view; the view gets the key as its second argument. (The
    completions views check the key in the same trip to a thread as the rest of their work: `_admit`.)"""

    def wrap(view: Callable[..., Awaitable[HttpResponse]]) -> Callable[..., Awaitable[HttpResponse]]:
        @accepts(*methods)
        async def authenticated(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            key = await authenticate(request)
            if key is None:
                return _unauthorized()
            return await view(request, key, *args, **kwargs)

        authenticated.__name__ = view.__name__
        authenticated.__doc__ = view.__doc__
        return authenticated

    return wrap


# --- Models ----------------------------------------------------------------------------------------------------


def _model_object(info: ModelInfo) -> dict[str, Any]:
    created = info.downloaded_at.timestamp() if info.downloaded_at else 0
    return {
        "id": info.repo_id,
        "object": "model",
        "created": int(created),
        "owned_by": info.repo_id.split("/", 1)[0] if "/" in info.repo_id else "local",
    }


def _ready_models(user: Any) -> list[dict[str, Any]]:
    """One entry per repo with a ready snapshot the user may see on a machine that can answer now (any node
    whose inference worker is alive, and this one), dated by its newest such snapshot. Read from the database
    and the workers' presence only: the files may all be on other machines."""
    try:
        nodes = routing.Cluster.now().live_nodes()
    except inference.InferenceUnavailable:  # Redis not answering: what this machine holds, as before
        nodes = set()
    nodes.add(settings.NODE_NAME)
    seen: dict[str, dict[str, Any]] = {}
    down = down_nodes()  # a machine whose workers stopped offers nothing until it is back
    for info in model_list(user=user):
        if info.status == Snapshot.Status.READY and info.node in nodes - down and info.repo_id not in seen:
            seen[info.repo_id] = _model_object(info)
    return sorted(seen.values(), key=lambda m: m["id"])


@endpoint("GET")
async def models_list(request: HttpRequest, key: ApiKey) -> HttpResponse:
    models = await sync_to_async(_ready_models)(key.user)
    return JsonResponse({"object": "list", "data": models})


@endpoint("GET")
async def model_detail(request: HttpRequest, key: ApiKey, model_id: str) -> HttpResponse:
    models = await sync_to_async(_ready_models)(key.user)
    for model in models:
        if model["id"] == model_id:
            return JsonResponse(model)
    return _model_not_found(model_id)


def _model_not_found(model_id: str) -> JsonResponse:
    return error_response(
        404,
        f"The model '{model_id[:200]}' does not exist or is not ready here. GET /v1/models lists the models you "
        "can use; pull others from the dashboard first.",
        code="model_not_found",
        param="model",
    )


def _snapshot_rows(user: Any, repo_id: str, current: str | None) -> list[Snapshot]:
    """The repo's snapshots `user` may see, newest first, kept under the catalog version `current` (a repo
    with none is not kept)."""

    def read() -> list[Snapshot] | None:
        # Not their file lists: kept rows stay small, and nothing on the way to the worker reads them.
        snapshots = snapshot_list(user=user, repo_id=repo_id).defer("files", "missing_files")
        return list(cache.newest_first(snapshots)) or None

    return _SNAPSHOTS.get((user.pk, repo_id), current, read) or []


def _resolve(model_id: str, user: Any, current: str | None = None) -> tuple[routing.Route, Markers] | None:
    """The snapshot that answers for a model id (`org/name`, or `org/name@revision`) on whichever machine holds
    it (routing.choose: loaded, else least busy), and its text markers from its row: the web server reads no
    model file, it may have none. None when no ready snapshot matches; routing.NodeDown when every machine
    holding one is down. The rows are kept under the catalog version `current` (None: read them); which
    machines are up is read each time."""
    repo_id, _, revision = model_id.partition("@")
    rows = _snapshot_rows(user, repo_id, current)
    try:
        matching = rows if not revision else cache.match_revision(rows, revision)
    except cache.CacheError:
        return None
    ready = [s for s in matching if s.status == Snapshot.Status.READY]
    if not ready:
        return None
    route = routing.choose(ready, label=model_id)
    return route, model_markers.markers_of(route.snapshot)


# --- Completions ----------------------------------------------------------------------------------------------


class Translator:
    """chat.* messages in, OpenAI chunks (or one whole object) out."""

    def __init__(self, parsed: schemas.CompletionRequest, markers: Markers, request_id: str = "") -> None:
        self.parsed = parsed
        self.completion = Completion(
            # The response id is the request's (the Usage row's request_id, the worker's log lines).
            **({"id": request_id.replace("-", "")} if request_id else {}),
            model=parsed.model,
            chat=parsed.kind == "chat",
            include_usage=parsed.include_usage,
            logprobs=parsed.top_logprobs is not None,
        )
        tools = parsed.options.get("tools")
        self.parser = StreamParser(markers if parsed.kind == "chat" else NO_MARKERS, tools=tools)
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason = "stop"

    def feed(self, message: dict[str, Any]) -> list[bytes]:
        """A chat.delta: its text, and the log probabilities of its tokens when the request asked."""
        self.completion.add_logprobs(message.get("logprobs"))
        return self._collect(self.parser.feed(message.get("text") or ""))

    def _collect(self, pieces: list) -> list[bytes]:  # type: ignore[type-arg]
        for piece in pieces:
            if piece.kind == "content":
                self.content.append(piece.text)
            elif piece.kind == "reasoning":
                self.reasoning.append(piece.text)
        return self.completion.piece_chunks(pieces)

    def done(self, message: dict[str, Any]) -> list[bytes]:
        chunks = self._collect(self.parser.finish())
        self.usage = message.get("usage") or {}
        reason = message.get("finish_reason") or "stop"
        reason = "stop" if reason == "cancelled" else reason
        if self.parser.tool_calls and reason == "stop":
            reason = "tool_calls"
        self.finish_reason = reason
        return chunks

    def whole(self) -> dict[str, Any]:
        return self.completion.whole(
            content="".join(self.content),
            reasoning="".join(self.reasoning),
            tool_calls=self.parser.tool_calls,
            finish_reason=self.finish_reason,
            usage=self.usage,
        )


def _worker_error(message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    code = str(message.get("code") or "internal")
    status, kind = ERROR_STATUS.get(code, (500, "server_error"))
    return status, error_object(
        str(message.get("message") or "The generation failed."),
        type=kind,
        code=ERROR_CODE_NAMES.get(code, code),
    )


async def _cancel(request_id: str) -> None:
    with contextlib.suppress(Exception):  # best effort: the worker also notices the closed channel's silence
        await sync_to_async(inference.cancel_generation, thread_sensitive=False)(request_id)


async def _first_reply(replies: AsyncIterator[dict[str, Any]], *, stream: bool) -> dict[str, Any] | None:
    """The first real message; for a stream, a keep-alive too: a streamed request with no word from the worker
    after KEEPALIVE_SECONDS (queued behind other answers, a model loading) starts its response then, so a
    client with a read timeout gets its role chunk and keep-alives instead of waiting for the worker."""
    async for message in replies:
        if stream or message.get("type") != "chat.keepalive":
            return message
    return None


async def _stream(
    translator: Translator,
    first: dict[str, Any],
    replies: AsyncIterator[dict[str, Any]],
    *,
    request_id: str,
    lease: inflight.Lease,
    queue: str,
) -> AsyncIterator[bytes]:
    finished = False
    try:
        yield translator.completion.role_chunk() or KEEPALIVE
        pace = _Pace(request_id=request_id, queue=queue, waiting=first.get("type") == "chat.keepalive")
        message: dict[str, Any] | None = first
        while message is not None:
            kind = message.get("type")
            if kind == "chat.done":
                # The worker is done: the slot is free before the client reads [DONE] and sends its next.
                await inflight.release_async(lease)
                for chunk in translator.done(message):
                    yield chunk
                for chunk in translator.completion.final_chunks(translator.finish_reason, translator.usage):
                    yield chunk
                finished = True
                return
            if kind == "chat.error":
                finished = True
                await inflight.release_async(lease)
                _, body = _worker_error(message)
                yield data(body)
                return
            for chunk in await pace.chunks(translator, message):
                yield chunk
                pace.wrote()
            message = await anext(replies, None)
        finished = True  # the replies ended without done/error: stream_replies always yields one, defensive
    except Exception:  # Redis went away mid-stream, or a bug: end the stream in a way clients understand
        log.exception("streaming %s failed", request_id)
        yield data(
            error_object("The stream failed; the answer is incomplete.", type="server_error", code="internal")
        )
    finally:
        if not finished:  # the client went away: stop generating for nobody
            await _cancel(request_id)
        await replies.aclose()  # type: ignore[attr-defined]


class _Pace:
    """What a stream writes before and between the answer's text: its place in line while the worker has not
    said a word, and a keep-alive comment after KEEPALIVE_SECONDS of silence."""

    def __init__(self, *, request_id: str, queue: str, waiting: bool) -> None:
        self.request_id = request_id
        self.queue = queue
        self.waiting = waiting  # no word from the worker yet
        self.last_write = time.monotonic()
        self._places_ahead = sync_to_async(inference.places_ahead, thread_sensitive=False)

    async def chunks(self, translator: Translator, message: dict[str, Any]) -> list[bytes]:
        """What to write for a message that is neither chat.done nor chat.error (maybe nothing)."""
        kind = message.get("type")
        if kind != "chat.keepalive":
            self.waiting = False
        if kind == "chat.keepalive" and self.waiting:
            # Its place in line, as an SSE comment (clients ignore comments; people reading curl do not).
            ahead = await self._places_ahead(self.request_id, self.queue)
            return [KEEPALIVE if ahead is None else f": queued, {ahead} ahead\n\n".encode()]
        if kind == "chat.delta":
            return translator.feed(message)
        if kind == "chat.keepalive" or (
            # Progress comes several times a second during a long prompt; a comment every few seconds is
            # all a proxy needs to keep the connection. A keep-alive only comes after that much silence.
            kind == "chat.progress" and time.monotonic() - self.last_write >= KEEPALIVE_SECONDS
        ):
            return [KEEPALIVE]
        return []

    def wrote(self) -> None:
        self.last_write = time.monotonic()


async def _complete(request: HttpRequest, parse: Parse) -> HttpResponse:
    received_ns = time.time_ns()  # the request's first hop (inference.stamp_hop)
    request_id = str(uuid.uuid4())
    layer = get_channel_layer()
    channel = await layer.new_channel()
    admitting = asyncio.ensure_future(
        # A pooled thread that no request signal reaches: Channels' wrapper gives it what Django gives a
        # request's thread, its database connection closed when past CONN_MAX_AGE and checked before its next
        # use (CONN_HEALTH_CHECKS), so a connection the database dropped is replaced instead of failing every
        # admission in that thread.
        database_sync_to_async(_admit, thread_sensitive=False)(
            parse,
            body=request.body,
            authorization=request.headers.get("Authorization", ""),
            request_id=request_id,
            reply_channel=channel,
            received_ns=received_ns,
        )
    )
    try:
        # A thread cannot be stopped half-way: should the client hang up meanwhile, what it admitted is undone.
        admitted = await asyncio.shield(admitting)
    except asyncio.CancelledError:
        admitting.add_done_callback(functools.partial(_abandoned, request_id=request_id))
        raise
    if isinstance(admitted, HttpResponse):
        return admitted
    lease = admitted.lease
    try:
        response = await _generate(admitted, layer, channel, request_id=request_id)
    except BaseException:
        inflight.release_soon(lease)
        raise
    if isinstance(response, StreamingHttpResponse):
        response.streaming_content = _released(response.streaming_content, lease)
    else:
        await inflight.release_async(lease)
    return response


@dataclass
class _Admitted:
    """A request on its way to the worker: what the answer is read with."""

    parsed: schemas.CompletionRequest
    lease: inflight.Lease
    markers: Markers
    queue: str


@workers.one_reading()
def _admit(
    parse: Parse, *, body: bytes, authorization: str, request_id: str, reply_channel: str, received_ns: int
) -> _Admitted | HttpResponse:
    """Everything before the request leaves for the worker, in one trip to a thread (each trip to a thread cost
    1-2 ms on the way to the first token): the key (401), the body (400), a slot among the requests in flight
    (429), the model and its machine (404, 503), the send. The error response, or the request as sent."""
    # Before the rows it keeps them under (catalog.Memo); presence, which routing reads, comes with it.
    current = catalog.version(read=workers.get_with_presence)
    key = _active_key(authorization, current)
    if key is None:
        return _unauthorized()
    try:
        parsed = parse(schemas.parse_body(body))
    except schemas.RequestError as exc:
        return error_response(400, exc.message, code=exc.code, param=exc.param)
    try:
        scopes = inflight.scopes_for(key.user_id, key.id, limits=UserLimits.of(key.user))
        lease = inflight.acquire(request_id, scopes)
    except inflight.LimitReached as exc:
        return _too_many(exc.scope)
    try:
        resolved = _resolve(parsed.model, key.user, current)
        if resolved is None:
            inflight.release(lease)
            return _model_not_found(parsed.model)
        route, markers = resolved
        generation = _generation_request(
            parsed,
            key,
            request_id=request_id,
            reply_channel=reply_channel,
            snapshot_id=route.snapshot.id,
            received_ns=received_ns,
        )
        queue = inference.start_generation(generation, queue=route.queue)
    except inference.InferenceUnavailable as exc:  # routing.NodeDown names the machine(s)
        inflight.release(lease)
        return _unavailable(exc)
    except BaseException:
        inflight.release(lease)
        raise
    return _Admitted(parsed=parsed, lease=lease, markers=markers, queue=queue)


def _abandoned(admitting: asyncio.Future[_Admitted | HttpResponse], *, request_id: str) -> None:
    """A request admitted for a client that had hung up: its slot back, and its generation stopped (each
    handed to a thread at once, as inflight.release_soon does: nothing here waits)."""
    if admitting.cancelled() or admitting.exception() is not None:
        return
    admitted = admitting.result()
    if isinstance(admitted, _Admitted):
        inflight.release_soon(admitted.lease)
        asyncio.get_running_loop().run_in_executor(None, chat.cancel_quietly, request_id)


def _too_many(scope: inflight.Scope) -> JsonResponse:
    whose = "This API key already has" if scope.kind == "apikey" else "You already have"
    together = "" if scope.kind == "apikey" else " (chat page and API together)"
    response = error_response(
        429,
        f"{whose} {scope.limit} requests in flight{together}; wait for one to finish.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
    )
    response["Retry-After"] = "1"
    return response


async def _released(content: Any, lease: inflight.Lease) -> AsyncIterator[bytes]:
    """The stream, giving the slot back when it ends (finished, failed or the client went away). Should the
    server abandon this generator without closing it, the lease expires unrenewed."""
    try:
        async for chunk in content:
            yield chunk
    finally:
        inflight.release_soon(lease)


async def _renewing(
    replies: AsyncIterator[dict[str, Any]], lease: inflight.Lease
) -> AsyncIterator[dict[str, Any]]:
    """The worker's replies, renewing the request's lease as they come (keep-alives arrive every few seconds
    while it is queued or the prompt is processed): a request that stopped reading them stops renewing."""
    renew = sync_to_async(inflight.renew, thread_sensitive=False)
    try:
        async for message in replies:
            if lease.renewal_due():
                await renew(lease)
            yield message
    finally:
        await replies.aclose()  # type: ignore[attr-defined]


async def _generate(admitted: _Admitted, layer: Any, channel: str, *, request_id: str) -> HttpResponse:
    """The answer to a request the worker has: a stream, or one object once it is done."""
    replies = _renewing(
        inference.stream_replies(
            layer,
            channel,
            request_id,
            settings.INFERENCE_PICKUP_TIMEOUT,
            keepalive=KEEPALIVE_SECONDS,
            queue=admitted.queue,
        ),
        admitted.lease,
    )
    translator = Translator(admitted.parsed, admitted.markers, request_id)
    try:
        return await _respond(
            translator, replies, request_id=request_id, lease=admitted.lease, queue=admitted.queue
        )
    except asyncio.CancelledError:  # the client disconnected before the answer was complete
        await _cancel(request_id)
        raise


def _unavailable(exc: inference.InferenceUnavailable) -> JsonResponse:
    return error_response(503, str(exc), type="server_error", code=exc.code)


def _generation_request(
    parsed: schemas.CompletionRequest,
    key: ApiKey,
    *,
    request_id: str,
    reply_channel: str,
    snapshot_id: int,
    received_ns: int,
) -> dict[str, Any]:
    """The request for the inference worker (its contract: models_app.services.inference)."""
    generation: dict[str, Any] = {
        "request_id": request_id,
        "reply_channel": reply_channel,
        "snapshot_id": snapshot_id,
        "options": parsed.options,
        "user_id": key.user_id,
        "api_key_id": key.id,
        "source": "api",
        "hops": {"received": received_ns},
    }
    if parsed.kind == "chat":
        generation["messages"] = parsed.messages
    else:
        generation["prompt"] = parsed.prompt
    return generation


async def _respond(
    translator: Translator,
    replies: AsyncIterator[dict[str, Any]],
    *,
    request_id: str,
    lease: inflight.Lease,
    queue: str,
) -> HttpResponse:
    """The status line waits for the worker's first word, so a request that cannot start (context too long,
    model failed to load, no worker took it) gets a real HTTP error, not a 200 with an error inside; a stream
    waits KEEPALIVE_SECONDS at most, then reports such an error inside the stream."""
    stream = translator.parsed.stream
    first = await _first_reply(replies, stream=stream)
    if first is None or first.get("type") == "chat.error":
        await replies.aclose()  # type: ignore[attr-defined]
        status, body = _worker_error(first or {"code": "internal"})
        return JsonResponse(body, status=status)
    if not stream:
        return await _whole_answer(translator, first, replies)
    response = StreamingHttpResponse(
        _stream(translator, first, replies, request_id=request_id, lease=lease, queue=queue),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _whole_answer(
    translator: Translator, first: dict[str, Any], replies: AsyncIterator[dict[str, Any]]
) -> JsonResponse:
    """The answer as one OpenAI object, once the worker is done."""
    message: dict[str, Any] | None = first
    while message is not None:
        kind = message.get("type")
        if kind == "chat.delta":
            translator.feed(message)
        elif kind == "chat.done":
            translator.done(message)
            return JsonResponse(translator.whole())
        elif kind == "chat.error":
            status, body = _worker_error(message)
            return JsonResponse(body, status=status)
        message = await anext(replies, None)
    return error_response(
        500, "The generation ended without an answer.", type="server_error", code="internal"
    )


@accepts("POST")
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await _complete(request, schemas.parse_chat)


@accepts("POST")
async def completions(request: HttpRequest) -> HttpResponse:
    return await _complete(request, schemas.parse_completion)


@csrf_exempt
async def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return error_response(404, f"Unknown endpoint {request.method} {request.path[:200]}.", code="unknown_url")
