"""`generate(request)`: one request, from the snapshot row to the last reply and the usage row.

The contract of `request` and of the replies is in models_app.services.inference. `generate` runs in a task
thread of the inference worker: it reads the database, hands a `Job` to the engine's loop (engine/batch.py),
which runs it batched with the other requests of the same model, then writes the database once (before
chat.done, so a page that reloads on chat.done reads the final text). On the loop thread, `Job.prepare` loads
the model and builds the prompt; `Job.run_alone` runs the single-request token loop (engine/alone.py), for
what cannot be batched.

The token loops do no database write and no Redis round trip: replies are batched every CHAT_BATCH_INTERVAL
and handed to the sender thread, and the cancel flag is an Event the sender thread sets.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from models_app.models import Message, Snapshot, Usage
from models_app.services import inference
from models_app.services import redis as app_redis
from models_app.services.engine.alone import stream_tokens
from models_app.services.engine.batch import Arrival, engine_loop
from models_app.services.engine.constrained import ConstraintError, grammar_processor, opens_thinking
from models_app.services.engine.logprobs import InvalidLogitBias, logit_bias_processor
from models_app.services.engine.prompt import (
    PromptError,
    answer_reserve,
    build_chat_prompt,
    build_text_prompt,
    decode_exact,
)
from models_app.services.engine.registry import LoadedModel, ModelLoadError, ModelSpec
from models_app.services.engine.sender import ReplyStream, cancel_key
from models_app.services.engine.state import EngineState, spec_for, state

log = logging.getLogger(__name__)
hops_log = logging.getLogger(inference.HOPS_LOG)


class GenerationError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Cancelled(Exception):
    pass


# --- The request ------------------------------------------------------------------------------------------------


@dataclass
class Request:
    request_id: str
    reply_channel: str
    snapshot_id: int
    messages: list[dict[str, Any]] | None
    prompt: str | None
    options: dict[str, Any]
    user_id: int | None
    api_key_id: int | None
    source: str
    assistant_message_id: int | None
    enqueued_at: float | None
    previous_turn: dict[str, Any] | None = None
    # When the request passed each step, time.time_ns() (inference.stamp_hop): the web side's, then ours.
    hops: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _turn(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        ids = value.get("ids") if isinstance(value, dict) else None
        if (
            not isinstance(ids, list)
            or not all(type(t) is int and t >= 0 for t in ids)
            or not isinstance(value.get("text"), str)
        ):
            raise GenerationError("invalid_request", "previous_turn must be {ids: [token ids], text}.")
        return {"ids": ids, "text": value["text"]}

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Request:
        messages, prompt = raw.get("messages"), raw.get("prompt")
        if (messages is None) == (prompt is None):
            raise GenerationError("invalid_request", "Give either messages or prompt.")
        if messages is not None and (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise GenerationError("invalid_request", "messages must be a non-empty list of {role, content}.")
        if prompt is not None and not isinstance(prompt, str):
            raise GenerationError("invalid_request", "prompt must be a string.")
        try:
            inference.check_request_size(messages=messages, prompt=prompt)  # also checked by every sender
            options = inference.normalize_options(raw.get("options"))
        except inference.InvalidOptions as exc:
            raise GenerationError("invalid_request", str(exc)) from exc
        return cls(
            request_id=str(raw["request_id"]),
            reply_channel=str(raw["reply_channel"]),
            snapshot_id=int(raw["snapshot_id"]),
            messages=messages,
            prompt=prompt,
            options=options,
            user_id=raw.get("user_id"),
            api_key_id=raw.get("api_key_id"),
            source=raw.get("source") or Usage.Source.API,
            assistant_message_id=raw.get("assistant_message_id"),
            enqueued_at=raw.get("enqueued_at"),
            previous_turn=cls._turn(raw.get("previous_turn")),
            hops=dict(raw["hops"]) if isinstance(raw.get("hops"), dict) else {},
        )


@dataclass
class Outcome:
    text: str = ""
    finish_reason: str = "length"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    tokens_per_second: float | None = None
    prompt_tps: float | None = None
    peak_memory_bytes: int = 0
    load_ms: float = 0.0
    queue_ms: float | None = None
    # {"ids": the prompt then the answer as token ids, "text": what they stand for}, when the answer is
    # whole: kept with a chat page answer, the next turn's prompt starts with it (engine.prompt.splice).
    turn: dict[str, Any] | None = None

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": self.ttft_ms,
            "tokens_per_second": self.tokens_per_second,
            "prompt_tps": self.prompt_tps,
            "peak_memory_bytes": self.peak_memory_bytes,
            "finish_reason": self.finish_reason,
            "load_ms": self.load_ms,
            "queue_ms": self.queue_ms,
        }


# --- Entry point ---------------------------------------------------------------------------------------------


def generate(
    raw: dict[str, Any], *, layer: Any = None, arrival: Arrival | None = None
) -> dict[str, Any] | None:
    """Run one request (see models_app.services.inference). Returns the usage dict, or None on error.
    Never raises: every failure becomes a chat.error to the requester and an error on the message.
    `arrival`: the engine loop expects this request (the intake took it: engine/batch.py GATHER); it lands
    when the job reaches the loop (the intake lands it when a failure came first)."""
    picked_ns = time.time_ns()
    engine = state()
    try:
        request = Request.parse(raw)
    except (GenerationError, KeyError, TypeError, ValueError) as exc:
        inference.leave_queue(raw)  # it no longer waits behind anything
        log.warning("rejected a malformed generation request: %s", exc)
        if raw.get("reply_channel") and raw.get("request_id"):
            stream = ReplyStream(
                channel=raw["reply_channel"],
                request_id=str(raw["request_id"]),
                layer=layer,
                poll_cancel=False,
            )
            stream.emit("chat.error", code="invalid_request", message=str(exc), worker=engine.hostname)
            stream.close()
        return None

    request.hops["picked"] = picked_ns
    engine.begin()
    stream = ReplyStream(channel=request.reply_channel, request_id=request.request_id, layer=layer)
    outcome = Outcome()
    try:
        _mark_picked(request, raw.get("queue"), engine.hostname)
        result = _run(engine, request, stream, outcome, arrival)
        return result.usage()
    except (GenerationError, ModelLoadError, PromptError) as exc:
        _fail(request, stream, engine, exc.code, str(exc), outcome)
    except Cancelled:
        _fail(request, stream, engine, "cancelled", "The request was cancelled before it started.", outcome)
    except Exception:
        log.exception("generation %s failed", request.request_id)
        _fail(
            request,
            stream,
            engine,
            "internal",
            "The generation failed unexpectedly; the worker log says why.",
            outcome,
        )
    finally:
        stream.close()
        engine.end()
        _log_hops(request, stream)
    return None


def _log_hops(request: Request, stream: ReplyStream) -> None:
    """One debug line with where the request was when, for `make bench`'s hop table (LOG_HOPS=1)."""
    if not hops_log.isEnabledFor(logging.DEBUG):
        return
    if stream.first_delta_sent_ns is not None:
        request.hops["first_sent"] = stream.first_delta_sent_ns
    hops_log.debug("request %s hops %s", request.request_id, json.dumps(request.hops))


def _mark_picked(request: Request, queue: Any, hostname: str) -> None:
    """One round trip: out of its queue's waiting line (whatever happens next, it no longer waits behind
    anything), taken by this worker (the web side's watch follows it now), and was it stopped meanwhile?"""
    pipe = app_redis.client().pipeline()
    if queue:
        pipe.zrem(inference.queued_key(str(queue)), request.request_id)
    pipe.set(inference.picked_key(request.request_id), hostname, ex=inference.CANCEL_TTL)
    pipe.exists(cancel_key(request.request_id))
    *_, cancelled = pipe.execute()
    if cancelled:  # stopped while it waited in the queue
        raise Cancelled


def _run(
    engine: EngineState, request: Request, stream: ReplyStream, outcome: Outcome, arrival: Arrival | None
) -> Outcome:
    if request.enqueued_at:
        outcome.queue_ms = round(max(0.0, time.time() - request.enqueued_at) * 1000, 1)
    engine_loop().run(
        Job(request=request, stream=stream, outcome=outcome, spec=spec_for(request.snapshot_id)), arrival
    )
    _save(request, outcome)
    stream.emit("chat.done", text=outcome.text, finish_reason=outcome.finish_reason, usage=outcome.usage())
    return outcome


@dataclass
class Prepared:
    """A request ready to generate: its model (held until the engine loop releases it), prompt and KV cache."""

    loaded: LoadedModel
    prompt_tokens: list[int]
    # The text the prompt tokens stand for (None when not known exactly): with a whole answer's text, what the
    # next turn's prompt may start with (engine.prompt.splice).
    prompt_text: str | None
    cached: int  # prompt_tokens[:cached] are in cache already
    cache: list[Any]
    max_tokens: int
    extra: list[Any]  # logit_bias and response_format processors
    sampler: Any
    processors: list[Any]
    batchable: bool


@dataclass
class Job:
    """One request on its way through the engine loop (engine/batch.py), which calls these on its thread."""

    request: Request
    stream: ReplyStream
    outcome: Outcome
    spec: ModelSpec

    def prepare(self, engine: EngineState) -> Prepared:
        """Load the model, build the prompt, take a cached KV prefix, send chat.started. Raises
        GenerationError, ModelLoadError, PromptError, Cancelled (the model is released then)."""
        request, stream, outcome = self.request, self.stream, self.outcome
        request.hops["engine"] = time.time_ns()
        options = request.options
        keep_alive = options.get("keep_alive", ...)
        if keep_alive is not ... and keep_alive < 0:
            keep_alive = None
        load_started = time.perf_counter()
        loaded = engine.registry.acquire(self.spec, keep_alive=keep_alive, user_id=request.user_id)
        try:
            outcome.load_ms = round((time.perf_counter() - load_started) * 1000, 1)
            if stream.should_stop:
                raise Cancelled
            prompt = _build_prompt(loaded, request, engine)
            outcome.prompt_tokens = len(prompt.tokens)
            remaining = loaded.context_length - len(prompt.tokens)
            max_tokens = min(options.get("max_tokens") or remaining, remaining)
            # Before chat.started: a bad token id or an unusable response_format is a 400, not a 200.
            extra = _extra_processors(loaded, options, prompt.tokens)
            cache, cached = engine.prompt_cache.fetch(self.spec.snapshot_id, prompt.tokens)
            if cache is None:
                cache = make_prompt_cache(loaded.model)
            outcome.cached_tokens = cached
            started: dict[str, Any] = {
                "prompt_tokens": outcome.prompt_tokens,
                "cached_tokens": cached,
                "max_tokens": max_tokens,
                "model": self.spec.repo_id,
                "worker": engine.hostname,
            }
            if prompt.notice:
                started["notice"] = prompt.notice
            # Held, to go out with the first text (or the first progress of a long prompt, one prefill chunk of
            # ~0.25 s later), in one message: sent alone now, its trip through Redis, the web process and the
            # client took CPU from the prefill it announces (~2.5 ms of the fast model's first token); sent
            # alone after the prefill, it cost the first text as much on the way.
            stream.emit("chat.started", held=True, **started)
            request.hops["prefill"] = time.time_ns()
        except BaseException:
            engine.registry.release(loaded)
            raise
        return Prepared(
            loaded=loaded,
            prompt_tokens=prompt.tokens,
            prompt_text=prompt.text,
            cached=cached,
            cache=cache,
            max_tokens=max_tokens,
            extra=extra,
            sampler=_sampler(options),
            processors=_processors(options, extra),
            # A seed needs MLX's one random state to itself; some caches cannot be merged into a batch.
            batchable=options.get("seed") is None and all(hasattr(c, "merge") for c in cache),
        )

    def run_alone(self, engine: EngineState, prepared: Prepared) -> None:
        """The single-request token loop (mlx-lm's stream_generate), for what cannot be batched."""
        request = self.request
        generated, shown = stream_tokens(
            prepared, options=request.options, stream=self.stream, outcome=self.outcome, hops=request.hops
        )
        if generated is not None:
            self.keep(engine, prepared, prepared.prompt_tokens + generated, prepared.cache, shown)

    def keep(
        self, engine: EngineState, prepared: Prepared, tokens: list[int], cache: list[Any], shown: str | None
    ) -> None:
        """Keep the KV cache for the next request, and, when the client got the whole answer (`shown`: its text
        as the conversation will hold it), the turn the next prompt may start with."""
        text = (
            prepared.prompt_text + shown if prepared.prompt_text is not None and shown is not None else None
        )
        if text is not None:
            self.outcome.turn = {"ids": tokens, "text": text}
        engine.prompt_cache.insert(
            self.spec.snapshot_id, tokens, cache, prompt_length=len(prepared.prompt_tokens), text=text
        )


def _sampler(options: dict[str, Any]) -> Any:
    return make_sampler(
        temp=options.get("temperature", inference.DEFAULT_TEMPERATURE),
        top_p=options.get("top_p", 0.0),
        min_p=options.get("min_p", 0.0),
        top_k=options.get("top_k", 0),
    )


def _processors(options: dict[str, Any], extra: list[Any]) -> list[Any]:
    return (
        make_logits_processors(
            repetition_penalty=options.get("repetition_penalty"),
            repetition_context_size=options.get("repetition_context_size", 20),
            presence_penalty=options.get("presence_penalty"),
            frequency_penalty=options.get("frequency_penalty"),
        )
        + extra
    )


def _extra_processors(loaded: LoadedModel, options: dict[str, Any], prompt_tokens: list[int]) -> list[Any]:
    """logit_bias, then the response_format grammar (last, so its mask has the final word)."""
    vocab_size = _vocab_size(loaded)
    processors = []
    try:
        if options.get("logit_bias"):
            processors.append(logit_bias_processor(options["logit_bias"], vocab_size))
        if options.get("grammar"):
            if opens_thinking(loaded.tokenizer, prompt_tokens):
                raise ConstraintError(
                    "response_format cannot be honoured with this model: its prompt opens a thinking block, "
                    "and forced JSON would be read as reasoning. Leave response_format out."
                )
            processors.append(grammar_processor(options["grammar"], loaded.tokenizer, vocab_size))
    except (InvalidLogitBias, ConstraintError) as exc:
        raise GenerationError("invalid_request", str(exc)) from None
    return processors


def _build_prompt(loaded: LoadedModel, request: Request, engine: EngineState) -> Any:
    reserve = answer_reserve(loaded.context_length, request.options.get("max_tokens"))
    if request.messages is not None:
        return build_chat_prompt(
            loaded.tokenizer,
            request.messages,
            context_length=loaded.context_length,
            reserve=reserve,
            tools=request.options.get("tools"),
            prefixes=_prefixes(loaded, request, engine),
        )
    return build_text_prompt(
        loaded.tokenizer, request.prompt or "", context_length=loaded.context_length, reserve=reserve
    )


def _prefixes(
    loaded: LoadedModel, request: Request, engine: EngineState
) -> list[tuple[list[int], str | None]]:
    """Earlier turns the prompt may start with, as the model saw and wrote them: the chat page's last answer
    (stored with its message, so a cold cache or another worker builds the same prompt), then what the
    prompt cache holds (an API client sends the history back as text)."""
    found: list[tuple[list[int], str | None]] = []
    previous = request.previous_turn
    if previous and previous["ids"] and max(previous["ids"]) < _vocab_size(loaded):
        found.append((previous["ids"], previous["text"]))
    found.extend(
        engine.prompt_cache.prefixes(
            request.snapshot_id, lambda tokens: decode_exact(loaded.tokenizer, tokens)
        )
    )
    return found


def _vocab_size(loaded: LoadedModel) -> int:
    config = loaded.config.get("text_config") or loaded.config
    return int(config.get("vocab_size") or len(loaded.tokenizer))


# --- Results ------------------------------------------------------------------------------------------------


def _save(request: Request, outcome: Outcome) -> None:
    """One transaction at the end: the usage row, the snapshot's last use, the chat message."""
    status = Message.Status.STOPPED if outcome.finish_reason == "cancelled" else Message.Status.COMPLETE
    with transaction.atomic():
        Usage.objects.create(
            request_id=request.request_id,
            user_id=request.user_id,
            api_key_id=request.api_key_id,
            snapshot_id=request.snapshot_id,
            source=request.source,
            prompt_tokens=outcome.prompt_tokens,
            cached_tokens=outcome.cached_tokens,
            completion_tokens=outcome.completion_tokens,
            ttft_ms=outcome.ttft_ms,
            tokens_per_second=outcome.tokens_per_second,
            peak_memory_bytes=outcome.peak_memory_bytes,
            finish_reason=outcome.finish_reason,
        )
        Snapshot.objects.filter(id=request.snapshot_id).update(last_used_at=timezone.now())
        if request.assistant_message_id:
            Message.objects.filter(id=request.assistant_message_id).update(
                content=outcome.text,
                status=status,
                error="",
                prompt_tokens=outcome.prompt_tokens,
                cached_tokens=outcome.cached_tokens,
                completion_tokens=outcome.completion_tokens,
                ttft_ms=outcome.ttft_ms,
                tokens_per_second=outcome.tokens_per_second,
                finish_reason=outcome.finish_reason,
                snapshot_id=request.snapshot_id,
                turn_tokens=outcome.turn,
            )
            if outcome.turn:
                # Only the latest answer's turn is read (the next prompt starts with it): a conversation
                # keeps one copy, not one per turn.
                Message.objects.filter(
                    conversation__messages__id=request.assistant_message_id, turn_tokens__isnull=False
                ).exclude(id=request.assistant_message_id).update(turn_tokens=None)


def _fail(
    request: Request, stream: ReplyStream, engine: EngineState, code: str, message: str, outcome: Outcome
) -> None:
    if request.assistant_message_id:
        try:
            status = Message.Status.STOPPED if code == "cancelled" else Message.Status.ERROR
            Message.objects.filter(id=request.assistant_message_id).update(
                status=status,
                error="" if code == "cancelled" else message,
                finish_reason=code,
                content=outcome.text,
            )
        except Exception:  # the database is down too: the reply below still tells the user
            log.exception("could not save the error of %s", request.request_id)
    stream.emit("chat.error", code=code, message=message, worker=engine.hostname)
