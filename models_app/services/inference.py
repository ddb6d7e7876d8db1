"""Inference: the one path from a chat page or an API call to tokens streamed back.

Web processes call `start_generation(request)` and read replies from a channel; the inference worker (one per
host, consuming the queue `inference` and its machine's `inference.<node>`) takes the request off that queue's
inbox (a Redis list, `inbox_key`: engine/intake.py) and runs `engine.generation.generate(request)` in one of its
slots, which feed one batching loop. Not a Celery task: Celery's dispatch cost 3-13 ms per request here, more
than a fast model's whole first token; Celery still carries loads, unloads and the periodic tasks
(tasks/inference.py), and its worker's presence is what `ensure_worker` checks. The engine is the only code that imports MLX. It imports this module (the contract below,
the request checks, the keys and constants both sides share); this module never imports the engine, so it is
safe anywhere.

The generation request (a JSON-able dict, sent as JSON through the inbox; it never holds a secret)
--------------------------------------------------------------------------------------------------
    request_id            str, required. A fresh uuid4 string: the Usage row's request_id, the cancel key.
    reply_channel         str, required. Channel-layer name the replies go to: a consumer's channel_name,
                          or `await channel_layer.new_channel()` in an async view.
    snapshot_id           int, required. A Snapshot the caller checked the user may use (visible_to).
                          Only its resolved local path is ever given to mlx-lm.
    messages              list of {"role": "system"|"user"|"assistant"|"tool", "content": str, ...}
                          (rendered with the model's chat template), or
    prompt                str: a raw completion prompt, no template. Exactly one of messages/prompt.
    options               dict, optional, see `normalize_options`: temperature, top_p, top_k, min_p,
                          repetition_penalty, repetition_context_size, presence_penalty, frequency_penalty,
                          seed, max_tokens (default: the rest of the context window), stop (str or list),
                          tools (list, passed to the chat template), keep_alive (seconds; 0 unloads right
                          after, negative keeps the model until evicted; default INFERENCE_KEEP_ALIVE).
    user_id               int | None. Who asked (Usage.user).
    api_key_id            int | None. The API key used, if any (Usage.api_key).
    source                "browser" | "api" (Usage.source).
    assistant_message_id  int | None. Chat page only: the worker saves the final text, status and figures
                          into this Message, and the prompt and answer as token ids (Message.turn_tokens).
    previous_turn         {ids: list[int], text: str} | None. Chat page only: the latest answer's
                          Message.turn_tokens (same model). The prompt keeps those ids as they are when their
                          text starts the rendered conversation, so the previous answer is never re-encoded
                          (engine.prompt.splice).
    enqueued_at           float, set by start_generation (epoch seconds), for the queue time in usage.
    queue                 str, set by start_generation: the queue it went to; the worker takes the request
                          out of that queue's waiting line (`places_ahead`) when it picks it up.
    hops                  {name: time.time_ns()}, optional: where the request was when (`stamp_hop`). The web
                          side stamps `received` and `enqueue`, the worker `picked`, `engine` (its loop took
                          it), `prefill`, `first_token` and `first_sent` (handed to the channel layer), and
                          logs them all in one debug line on the HOPS_LOG logger (LOG_HOPS=1 shows it;
                          `make bench` reads it). Wall clocks of processes on one host compare.

Replies (made by engine/sender.py's ReplyStream), sent with `channel_layer.send(reply_channel, ...)`, `seq` from 0, no gaps:
    chat.started  {notice?, prompt_tokens, cached_tokens, max_tokens, model, worker}  once, first
    chat.progress {processed, total}            while a long prompt is processed (optional)
    chat.delta    {text, tokens}                batched every CHAT_BATCH_INTERVAL (longer while several
                                                answers stream: engine/batch.py delta_interval)
    chat.done     {text, finish_reason, usage}  finish_reason: stop | length | cancelled
    chat.error    {code, message}               instead of chat.done; codes: model_load_failed,
                                                context_too_long, invalid_request, cancelled, internal
    Several replies that waited together travel as one channel-layer message, `chat.bundle` {request_id,
    messages: [...]}, in order (chat.started goes with the first text): read them with `unbundle`.
    A request fails before chat.started (model_load_failed, context_too_long, cancelled while queued), or
    after it with chat.error internal; otherwise it ends with exactly one chat.done.
    usage: prompt_tokens, cached_tokens, completion_tokens, ttft_ms, tokens_per_second, peak_memory_bytes,
    finish_reason, load_ms, queue_ms, prompt_tps.

The web side never waits forever: `stream_replies` (and the chat consumer, with the same `ReplyWatch`) turns
"nobody picked the request up" and "the worker that had it died" into chat.error `no_worker` / `worker_died`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from asgiref.sync import sync_to_async
from celery import current_app
from django.conf import settings

from models_app.services import redis as app_redis
from models_app.services import workers
from models_app.units import parse_duration

log = logging.getLogger(__name__)

QUEUE = "inference"
# A request nobody picked up within this long is dropped at pickup (engine/intake.py): its page gave up long ago.
QUEUE_EXPIRY = 900
CANCEL_TTL = 3600
MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 200
# OpenAI's limits: top_logprobs 0..20 (chat), and a logit_bias value is -100..100.
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_GRAMMAR_LENGTH = 200_000

# The logger of the per-request hop timings (see `hops` in the request above): debug, off unless LOG_HOPS.
HOPS_LOG = "models_app.hops"

# Error codes the web side adds to the worker's.
NO_WORKER = "no_worker"
WORKER_DIED = "worker_died"

# What a request gets for an option it leaves out: the OpenAI API's documented defaults, and what a new chat
# starts with until the user saves their own (Settings → Default generation settings). None means "off"
# (top_p) or "the rest of the context window" (max_tokens). The one table: the form, the chat page and the
# engine read it.
DEFAULT_GENERATION: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": None,
    "max_tokens": None,
    "system_prompt": "",
}
DEFAULT_TEMPERATURE: float = DEFAULT_GENERATION["temperature"]

# name: (type, minimum, maximum)
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 5.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 100_000),
    "min_p": (float, 0.0, 1.0),
    "repetition_penalty": (float, 0.0, 10.0),
    "repetition_context_size": (int, 1, 100_000),
    "presence_penalty": (float, -2.0, 2.0),
    "frequency_penalty": (float, -2.0, 2.0),
    "seed": (int, 0, 2**32 - 1),
    "max_tokens": (int, 1, 10_000_000),
    # Present (0 included): report each generated token's log probability, with this many alternatives.
    "logprobs": (int, 0, MAX_TOP_LOGPROBS),
}


class InferenceUnavailable(Exception):
    """No live inference worker (or Redis is down): tell the user now instead of queueing into the void."""

    code = NO_WORKER


class InvalidOptions(ValueError):
    """An option the engine cannot take. `param` names it (the OpenAI API's error `param`); str() is a
    sentence for a person ("Max tokens must be between 1 and 10,000,000.")."""

    code = "invalid_request"

    def __init__(self, param: str | None, problem: str) -> None:
        self.param = param
        self.problem = problem
        super().__init__(f"{_LABELS.get(param or '', param or 'Options')} {problem}.")


# How the chat page names each option (its field labels).
_LABELS = {
    "temperature": "Temperature",
    "top_p": "Top p",
    "top_k": "Top k",
    "min_p": "Min p",
    "repetition_penalty": "Repetition penalty",
    "repetition_context_size": "Repetition context size",
    "presence_penalty": "Presence penalty",
    "frequency_penalty": "Frequency penalty",
    "seed": "Seed",
    "max_tokens": "Max tokens",
    "stop": "Stop strings",
    "tools": "Tools",
    "keep_alive": "Keep alive",
    "logprobs": "Top logprobs",
    "logit_bias": "Logit bias",
    "response_format": "Response format",
}


def _figure(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


class RequestTooLarge(InvalidOptions):
    """More messages or characters than one request may hold; `param` names the field for the API's 400."""

    def __init__(self, message: str, param: str) -> None:
        # The message is a whole sentence already, not an option's "problem" to be labelled.
        ValueError.__init__(self, message)
        self.param = param
        self.problem = message


def _text_size(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts
        return sum(_text_size(part.get("text") if isinstance(part, dict) else part) for part in content)
    return 0


def check_request_size(*, messages: list[dict[str, Any]] | None = None, prompt: str | None = None) -> None:
    """Bound one request's size (INFERENCE_MAX_MESSAGES, INFERENCE_MAX_PROMPT_CHARS) before it takes the
    single inference worker: 10,000 tiny messages held it for 11 minutes while the prompt was fitted to the
    window. Raises RequestTooLarge."""
    if messages is not None and len(messages) > settings.INFERENCE_MAX_MESSAGES:
        raise RequestTooLarge(
            f"A request may hold at most {settings.INFERENCE_MAX_MESSAGES:,} messages; this one has "
            f"{len(messages):,}. Drop older messages (or start a new chat).",
            "messages",
        )
    if messages is not None:
        chars = sum(_text_size(m.get("content")) for m in messages if isinstance(m, dict))
    else:
        chars = len(prompt or "")
    if chars > settings.INFERENCE_MAX_PROMPT_CHARS:
        raise RequestTooLarge(
            f"A request may hold at most {settings.INFERENCE_MAX_PROMPT_CHARS:,} characters of text; this one "
            f"has {chars:,}. Send less (or start a new chat).",
            "messages" if messages is not None else "prompt",
        )


# --- Options ---------------------------------------------------------------------------------------------------


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: seconds, or a duration string ("5m", "1h"); 0 unloads right after the request;
    negative keeps the model loaded until evicted (None). Raises InvalidOptions."""
    if isinstance(value, bool):
        raise InvalidOptions("keep_alive", "must be a number of seconds or a duration like 5m")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidOptions("keep_alive", "must be finite")
        return None if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            return None
        try:
            return float(parse_duration(text))
        except ValueError as exc:
            raise InvalidOptions("keep_alive", f"is not a duration ({exc})") from exc
    raise InvalidOptions("keep_alive", "must be a number of seconds or a duration like 5m")


def normalize_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Validate sampling and generation options; unknown keys and None values are dropped. Raises
    InvalidOptions with a message a user can act on."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidOptions(None, "must be an object")
    clean: dict[str, Any] = {}
    for name, (kind, low, high) in _NUMBERS.items():
        value = options.get(name)
        if value is not None and value != "":
            clean[name] = _number(name, value, kind, low, high)
    if options.get("stop") not in (None, "", []) and (stops := _stops(options["stop"])):
        clean["stop"] = stops
    if tools := options.get("tools"):
        clean["tools"] = _tools(tools)
    if bias := options.get("logit_bias"):
        clean["logit_bias"] = _logit_bias(bias)
    if grammar := options.get("grammar"):
        clean["grammar"] = _grammar(grammar)
    if options.get("keep_alive") not in (None, ""):
        keep_alive = parse_keep_alive(options["keep_alive"])
        clean["keep_alive"] = -1 if keep_alive is None else keep_alive
    return clean


def _number(name: str, value: Any, kind: type, low: float, high: float) -> float | int:
    """One numeric option, `kind` int or float, within [low, high]."""
    if isinstance(value, bool):
        raise InvalidOptions(name, "must be a number")
    try:
        number = kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError):
        raise InvalidOptions(name, "must be a number") from None
    if kind is int and float(value) != number:
        raise InvalidOptions(name, "must be a whole number")
    if not (low <= number <= high) or (isinstance(number, float) and not math.isfinite(number)):
        raise InvalidOptions(name, f"must be between {_figure(low)} and {_figure(high)}")
    return number


def _stops(stop: Any) -> list[str]:
    """Stop strings: one string or a list of them; empty ones dropped."""
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidOptions("stop", "must be a string or a list of strings")
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in stops):
        raise InvalidOptions(
            "stop",
            f"must be at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_LENGTH} characters each",
        )
    return stops


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidOptions("tools", "must be a list of objects")
    return tools


def _grammar(grammar: Any) -> str:
    """An llguidance grammar compiled from response_format by the API (models_app.openai.schemas)."""
    if not isinstance(grammar, str) or len(grammar) > MAX_GRAMMAR_LENGTH:
        raise InvalidOptions(
            "response_format", f"must be at most {MAX_GRAMMAR_LENGTH:,} characters of schema"
        )
    return grammar


def _logit_bias(bias: Any) -> dict[str, float]:
    """OpenAI's logit_bias: {"token id": bias}, bias -100..100 added to that token's logit. Keys stay strings
    (JSON objects have string keys; the worker checks them against the model's vocabulary)."""
    if not isinstance(bias, dict):
        raise InvalidOptions("logit_bias", "must be an object mapping token ids to numbers")
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidOptions("logit_bias", f"takes at most {MAX_LOGIT_BIAS_ENTRIES:,} tokens")
    clean: dict[str, float] = {}
    for key, value in bias.items():
        token = str(key).strip()
        if not token.isdigit():
            raise InvalidOptions("logit_bias", "must have token ids (whole numbers) as keys")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidOptions("logit_bias", "must have numbers as values")
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise InvalidOptions(
                "logit_bias", f"values must be between -{MAX_LOGIT_BIAS:g} and {MAX_LOGIT_BIAS:g}"
            )
        clean[str(int(token))] = float(value)
    return clean


# --- Web side: enqueue, cancel, read replies ------------------------------------------------------------------


def queue_for_snapshot(snapshot_id: int) -> str:
    """The inference queue of the machine that holds the snapshot (the shared queue on a single machine
    whose worker reads no node queue). Raises routing.NodeDown, naming the machine, when its worker is not
    alive: the shared queue would hand the request to another machine, which does not have the files."""
    from models_app.models import Snapshot
    from models_app.services import routing

    snapshot = Snapshot.objects.select_related("repository").filter(id=snapshot_id).first()
    node = snapshot.node if snapshot is not None else settings.NODE_NAME
    cluster = routing.Cluster.now()
    queue = cluster.queue_of(node)
    if queue is None and node == settings.NODE_NAME and not cluster.has_node_queues():
        return QUEUE  # one machine: the send's own check says no inference worker is running
    if queue is None:
        label = f"{snapshot.repository.repo_id}@{snapshot.short_sha}" if snapshot is not None else "The model"
        raise routing.node_down(label, [node])
    return queue


def stamp_hop(request: dict[str, Any], name: str) -> None:
    """Note when the request passed `name` (one time_ns() call: cheap enough for every request)."""
    request.setdefault("hops", {})[name] = time.time_ns()


def start_generation(request: dict[str, Any], *, queue: str | None = None) -> str:
    """Enqueue a generation on the inference queue of the snapshot's machine (`queue`: the route's, when the
    caller routed it); returns that queue. Raises InferenceUnavailable when no live worker consumes the queue
    (checked in Redis in about a millisecond) or when the broker is down."""
    queue = queue or queue_for_snapshot(request["snapshot_id"])
    ensure_worker(queue)
    enqueued_at = time.time()
    request_id = str(request["request_id"])
    stamp_hop(request, "enqueue")
    message = json.dumps({**request, "enqueued_at": enqueued_at, "queue": queue})
    try:
        # One round trip: its place in the queue, for "N ahead" while it waits (the worker takes it out when
        # it picks it up), and the request itself. The inbox expires with its last request, should no worker
        # ever come back for it.
        with app_redis.client().pipeline(transaction=False) as pipe:
            pipe.zadd(queued_key(queue), {request_id: enqueued_at})
            pipe.rpush(inbox_key(queue), message)
            pipe.expire(inbox_key(queue), QUEUE_EXPIRY)
            pipe.execute()
    except redis.RedisError as exc:  # the request would never run: say so now
        leave_queue({"request_id": request_id, "queue": queue})
        raise InferenceUnavailable(f"The task queue is not answering: {exc}") from exc
    return queue


def inbox_key(queue: str) -> str:
    """The Redis list of a queue's generation requests (JSON), oldest first: the inference worker's intake
    pops them (engine/intake.py)."""
    return app_redis.key("inference", "inbox", queue)


def queued_key(queue: str) -> str:
    return app_redis.key("inference", "queued", queue)


def leave_queue(request: dict[str, Any]) -> None:
    """The request no longer waits in its queue (the worker picked it up, or it was never sent)."""
    if request.get("queue") and request.get("request_id"):
        with contextlib.suppress(redis.RedisError):
            app_redis.client().zrem(queued_key(str(request["queue"])), str(request["request_id"]))


def places_ahead(request_id: str, queue: str) -> int | None:
    """How many requests the worker will take before this one (the answer it is writing included), or None
    once it was picked up. The worker takes a queue's requests in arrival order. Blocking (Redis)."""
    key, now = queued_key(queue), time.time()
    try:
        with app_redis.client().pipeline() as pipe:
            # Requests whose worker died before picking them up: dropped at pickup after QUEUE_EXPIRY.
            pipe.zremrangebyscore(key, "-inf", now - QUEUE_EXPIRY)
            pipe.zscore(key, request_id)
            _, score = pipe.execute()
        if score is None:
            return None
        ahead = app_redis.client().zcount(key, "-inf", f"({score}")
        busy = any(w.extra.get("busy_since") for w in workers.workers_for_queue(queue))
    except redis.RedisError:
        return None
    return int(ahead) + (1 if busy else 0)


def request_load(snapshot_id: int, *, keep_alive: Any = None, user: Any = None) -> None:
    """The Load button: warm a model on the inference worker for `user` (the caller checked they may see
    it). Loading is open to anyone who may use the model; the loader is recorded, see request_unload."""
    user_id = getattr(user, "pk", None)
    _send("inference.load", [snapshot_id, keep_alive, user_id], queue=queue_for_snapshot(snapshot_id))


def may_unload(user: Any, model: dict[str, Any]) -> bool:
    """Staff may unload any model; anyone else only one their own request loaded (`model`: an entry of
    loaded_models())."""
    return bool(user.is_staff) or (model.get("loaded_by") is not None and model.get("loaded_by") == user.pk)


class UnloadRefused(PermissionError):
    """Someone else's model: only its loader or staff may unload it."""

    def __init__(self) -> None:
        super().__init__(
            "Only the user who loaded this model, or staff, can unload it; it leaves memory by itself once "
            "idle for its keep-alive."
        )


def request_unload(snapshot_id: int, *, user: Any = None) -> bool:
    """The Unload button, for `user` (None: the system; staff may unload any model). For anyone else: False,
    and nothing sent, when the model is not loaded; UnloadRefused when someone else loaded it. The worker
    checks the loader again (the model may have been unloaded and loaded by someone else meanwhile) and never
    unloads a model that is generating: a running answer, anyone's, always finishes."""
    if user is not None and not user.is_staff:
        model = loaded_models().get(snapshot_id)
        if model is None:  # not loaded, or not reported yet (heartbeats come every few seconds)
            return False
        if not may_unload(user, model):
            raise UnloadRefused
    by_user = None if user is None or user.is_staff else user.pk
    _send("inference.unload", [snapshot_id, by_user], queue=queue_for_snapshot(snapshot_id))
    return True


def visible_loaded(user: Any, models: list[dict[str, Any]]) -> set[int]:
    """The snapshot ids among `models` (loaded_models() entries) that `user` may see: one query."""
    from models_app.selectors.snapshots import snapshot_list

    ids = {m["snapshot_id"] for m in models}
    if not ids:
        return set()
    visible = snapshot_list(user=user, include_deleted=True).filter(id__in=ids)
    return set(visible.values_list("id", flat=True))


def ensure_worker(queue: str = QUEUE) -> None:
    """Raise InferenceUnavailable unless a live worker consumes queue: callers check before writing rows, so
    a user whose request cannot run keeps their text instead of a dead message in the history."""
    try:
        live = workers.workers_for_queue(queue)
    except redis.RedisError as exc:
        raise InferenceUnavailable(f"Redis is not answering ({exc}); no generation can start.") from exc
    if not live:
        raise InferenceUnavailable(NO_WORKER_MESSAGE)


NO_WORKER_MESSAGE = (
    "No inference worker is running, so nothing can answer. Start one (`make run` does) and try again."
)


def _send(task: str, args: list[Any], *, queue: str = QUEUE) -> None:
    ensure_worker(queue)
    try:
        current_app.send_task(task, args=args, queue=queue, expires=QUEUE_EXPIRY)
    except Exception as exc:  # the broker refused: say so now, the request would never run
        raise InferenceUnavailable(f"The task queue is not answering: {exc}") from exc


def cancel_generation(request_id: str) -> None:
    """Ask the worker to stop this request: it checks the flag every ~50 ms (or at pickup, when queued)."""
    app_redis.client().set(app_redis.key("cancel", request_id), "1", ex=CANCEL_TTL)


def picked_key(request_id: str) -> str:
    """Set by the worker when it takes a request, to its Celery hostname: the watch then follows that worker."""
    return app_redis.key("inference", "picked", request_id)


def error_payload(request_id: str, code: str, message: str, seq: int = -1) -> dict[str, Any]:
    """A chat.error made on the web side (seq -1: it is not part of the worker's sequence)."""
    return {"type": "chat.error", "request_id": request_id, "seq": seq, "code": code, "message": message}


class ReplyWatch:
    """Decides, after a silence, whether to keep waiting for a request's replies.

    Not picked up yet: wait while some inference worker is alive and busy (the request is queued behind
    another); fail with no_worker when none is alive, or when live workers stay idle for two checks in a row.
    Picked up: wait while the worker that took it is alive (a long prompt or a model load can be silent);
    fail with worker_died when its presence expires.
    """

    def __init__(self, request_id: str, *, pickup_timeout: float, queue: str = QUEUE) -> None:
        self.request_id = request_id
        self.pickup_timeout = pickup_timeout
        self.queue = queue
        self.worker: str | None = None
        self.last_seen = self.last_check = time.monotonic()
        self._idle_checks = 0

    def seen(self, payload: dict[str, Any]) -> None:
        self.last_seen = time.monotonic()
        if payload.get("worker"):
            self.worker = payload["worker"]

    def silent_for(self) -> float:
        return time.monotonic() - self.last_seen

    def _of_machine(self) -> str:
        """ " of machine B" when the request went to one machine's own queue: the message names it."""
        node = self.queue.removeprefix("inference.") if self.queue.startswith("inference.") else ""
        return f" of machine {node}" if node else ""

    def due(self) -> bool:
        """Silent for pickup_timeout, and not checked within the last pickup_timeout."""
        now = time.monotonic()
        return now - self.last_seen >= self.pickup_timeout and now - self.last_check >= self.pickup_timeout

    def check(self) -> dict[str, Any] | None:
        """An error payload when the request is lost, else None (keep waiting). Blocking (Redis): call it
        through sync_to_async from async code."""
        self.last_check = time.monotonic()
        try:
            if self.worker is None:
                self.worker = app_redis.client().get(picked_key(self.request_id))
            live = workers.workers_for_queue(self.queue)
        except redis.RedisError as exc:
            return error_payload(self.request_id, NO_WORKER, f"Redis is not answering: {exc}")
        names = {w.hostname for w in live}
        if self.worker is not None:
            if self.worker in names:
                return None
            return error_payload(
                self.request_id,
                WORKER_DIED,
                f"The inference worker{self._of_machine()} stopped while handling this request; the answer is "
                "incomplete. Try again once it is back.",
            )
        if not live:
            return error_payload(
                self.request_id,
                NO_WORKER,
                f"No inference worker{self._of_machine()} picked up the request: none is running. Start one "
                "(`make run` does).",
            )
        if any(w.extra.get("busy_since") for w in live):
            self._idle_checks = 0
            return None  # queued behind another generation
        self._idle_checks += 1
        if self._idle_checks >= 2:
            return error_payload(
                self.request_id,
                NO_WORKER,
                "No inference worker picked up the request, although one is running. Check the worker log.",
            )
        return None


BUNDLE = "chat.bundle"


def bundle(request_id: str, replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Replies of one request that go out together, as one channel-layer message."""
    return {"type": BUNDLE, "request_id": request_id, "messages": replies}


def unbundle(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The replies a channel-layer message carries, in order."""
    return list(message["messages"]) if message.get("type") == BUNDLE else [message]


async def stream_replies(
    channel_layer: Any,
    channel: str,
    request_id: str,
    pickup_timeout: float,
    *,
    keepalive: float | None = None,
    queue: str = QUEUE,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the replies to request_id arriving on channel, until chat.done or chat.error (inclusive).

    After pickup_timeout seconds without any message, ask the ReplyWatch: it either keeps waiting or yields
    a chat.error (no_worker / worker_died) and ends, so a page never waits forever. With keepalive, a
    {"type": "chat.keepalive"} is yielded after that many silent seconds (for SSE comments during a long
    prompt); it carries no seq and is not a realtime payload.
    """
    watch = ReplyWatch(request_id, pickup_timeout=pickup_timeout, queue=queue)
    check = sync_to_async(watch.check, thread_sensitive=False)
    step = min(pickup_timeout, keepalive) if keepalive else pickup_timeout
    # One receive stays pending across quiet periods instead of a wait_for() per step: cancelling a receive
    # on every timeout races with a message arriving at that moment (Python 3.11's wait_for can drop a result
    # that completes as it times out), and each cancellation is a path through channels_redis's receive lock.
    receiving: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            if receiving is None:
                receiving = asyncio.ensure_future(channel_layer.receive(channel))
            done, _ = await asyncio.wait({receiving}, timeout=step)
            if not done:
                if keepalive and watch.silent_for() >= keepalive:
                    yield {"type": "chat.keepalive", "request_id": request_id}
                if watch.due():
                    error = await check()
                    if error is not None:
                        yield error
                        return
                continue
            message, receiving = receiving.result(), None
            if message.get("request_id") != request_id:
                continue  # a late reply to an earlier request on a reused channel
            for reply in unbundle(message):
                watch.seen(reply)
                yield reply
                if reply.get("type") in ("chat.done", "chat.error"):
                    return
    finally:
        if receiving is not None:
            receiving.cancel()  # not awaited: a cancellation of our own caller must stay one


def loaded_models() -> dict[int, dict[str, Any]]:
    """Models loaded on live inference workers, by snapshot id, as their heartbeats report them (web side)."""
    result: dict[int, dict[str, Any]] = {}
    try:
        live = workers.workers_for_queue(QUEUE)
    except redis.RedisError:
        return result
    for worker in live:
        for model in worker.extra.get("loaded_models", []):
            result[model["snapshot_id"]] = {**model, "worker": worker.hostname}
    return result
