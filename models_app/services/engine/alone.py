"""The single-request token loop, for a request that cannot be batched (engine/batch.py says which): the prompt
in paced chunks (prefill.py), then mlx-lm's stream_generate, its output turned into what the requester sees:
text through the stop strings, log probabilities, chat.delta batching and the figures that end up in usage.
The batched loop does the same with bare token ids (engine/answer.py).

No database write and no Redis round trip per token: replies are batched every CHAT_BATCH_INTERVAL and handed
to the sender thread, and the cancel flag is an Event the sender thread sets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx_lm
from django.conf import settings

from models_app.services.engine.logprobs import LogprobRelease, TokenLogprobs
from models_app.services.engine.prefill import mlx_forward, prefill, with_prompt_context
from models_app.services.engine.prompt import as_shown
from models_app.services.engine.sender import ReplyStream
from models_app.services.engine.stops import StopMatcher

if TYPE_CHECKING:  # generation imports this module
    from models_app.services.engine.generation import Outcome, Prepared

PROGRESS_INTERVAL = 0.25


class _StoppedInPrompt(Exception):
    """Stop (or a reader gone) noticed between two prompt chunks."""


def stream_tokens(
    prepared: Prepared,
    *,
    options: dict[str, Any],
    stream: ReplyStream,
    outcome: Outcome,
    hops: dict[str, int],
) -> tuple[list[int] | None, str | None]:
    """Generate the answer, sending it as it comes and filling `outcome`. Returns the generated token ids when
    the KV cache is consistent (worth keeping), and what they stand for in the conversation when the client
    received the whole answer: its text, and the end-of-sequence token's, which the stream leaves out.
    (Stopped by a stop string or by Stop, the ids hold more than the text.) `hops` (the request's, see
    inference.stamp_hop) gets the first token's time."""
    if options.get("seed") is not None:
        mx.random.seed(options["seed"])
    loop = _AloneLoop(prepared, options=options, stream=stream, hops=hops)
    loop.consume(loop.start())
    loop.close()
    loop.record(outcome)
    return loop.result(outcome.text)


class _AloneLoop:
    """One answer's state as its tokens arrive: the text so far, what waits to be sent, and the timing."""

    def __init__(
        self, prepared: Prepared, *, options: dict[str, Any], stream: ReplyStream, hops: dict[str, int]
    ) -> None:
        self.prepared = prepared
        self.stream = stream
        self.hops = hops
        self.stops = StopMatcher(options.get("stop", []))
        # Log probabilities only when asked: nothing per token otherwise.
        tokenizer = prepared.loaded.tokenizer
        self.scorer = TokenLogprobs(tokenizer, options["logprobs"]) if "logprobs" in options else None
        self.release = LogprobRelease()
        self.interval = settings.CHAT_BATCH_INTERVAL
        self.uncached = prepared.prompt_tokens[prepared.cached :]
        self.prefilled = 0  # of the uncached tokens, fed before stream_generate
        self.parts: list[str] = []
        self.pending: list[str] = []
        self.entries: list[dict[str, Any]] = []
        self.generated: list[int] = []
        self.finish = "length"
        self.consistent = True  # the KV cache holds the prompt and the generated tokens, nothing less
        self.whole = False  # ended by the model (end of sequence, max_tokens): the client got all of it
        self.prompt_tps: float | None = None
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.last_flush = 0.0
        self.last_progress = 0.0
        mx.reset_peak_memory()
        self.started = time.perf_counter()

    def start(self) -> Iterator[Any]:
        """The prompt in paced chunks (Stop is noticed between them within ~CHUNK_SECONDS), then mlx-lm's
        generator from its last token; nothing to generate when Stop came during the prompt."""
        prepared, loaded = self.prepared, self.prepared.loaded
        try:
            self.prefilled = prefill(
                mlx_forward(loaded.model, prepared.cache),
                self.uncached,
                loaded.prefill,
                after_chunk=self._after_chunk,
            ).tokens
        except _StoppedInPrompt:
            self.finish = "cancelled"
            self.consistent = False  # the cache holds part of the prompt
            return iter(())
        return mlx_lm.stream_generate(
            loaded.model,
            loaded.tokenizer,
            self.uncached[self.prefilled :],
            max_tokens=prepared.max_tokens,
            sampler=prepared.sampler,
            logits_processors=with_prompt_context(prepared.processors, self.uncached[: self.prefilled])
            or None,
            prompt_cache=prepared.cache,
        )

    def _after_chunk(self, processed: int, _total: int) -> None:
        if self.stream.should_stop:
            raise _StoppedInPrompt
        now = time.perf_counter()
        # Only a prompt that takes a while is worth a progress bar.
        if now - self.last_progress >= PROGRESS_INTERVAL and (
            self.last_progress or now - self.started >= PROGRESS_INTERVAL
        ):
            self.last_progress = now
            self.stream.emit(
                "chat.progress",
                processed=self.prepared.cached + processed,
                total=len(self.prepared.prompt_tokens),
            )

    def consume(self, responses: Iterator[Any]) -> None:
        try:
            for response in responses:
                if self._take(response):
                    break
        finally:
            if hasattr(responses, "close"):
                responses.close()

    def _take(self, response: Any) -> bool:
        """One of stream_generate's responses; True when the answer is over."""
        self.last_at = time.perf_counter()
        if self.first_at is None:
            self.first_at = self.last_at
            self.hops["first_token"] = time.time_ns()
            self.prompt_tps = round(
                len(self.uncached) / max(self.last_at - self.started, 1e-6)
                if self.prefilled
                else response.prompt_tps,
                1,
            )
        self.generated.append(response.token)
        text = self.stops.feed(response.text)
        if self.scorer is not None:
            # The end-of-sequence token (finish "stop") is not part of the answer: no entry, as OpenAI.
            if response.finish_reason != "stop":
                self.release.add(self.scorer.entry(response.token, response.logprobs))
            self.entries.extend(self.release.shown(text))
        if text:
            self.parts.append(text)
            self.pending.append(text)
        if self.stops.stopped:
            self.finish = "stop"
            return True
        if response.finish_reason:
            self.finish = response.finish_reason
            self.whole = True
            return True
        if self.stream.should_stop:
            self.finish = "cancelled"
            return True
        self._send_if_due()
        return False

    def _send_if_due(self) -> None:
        # The first text goes out at once (time to first token: last_flush is 0), the rest in batches.
        if (self.pending or self.entries) and self.last_at - self.last_flush >= self.interval:
            self._emit_delta()
            if not self.last_flush:
                self.stream.flush()  # see ReplyStream.flush: on its way before the next token is computed
            self.last_flush = self.last_at

    def close(self) -> None:
        """What the stop strings and the logprobs held back goes out."""
        tail = self.stops.flush()
        if tail:
            self.parts.append(tail)
            self.pending.append(tail)
        if self.scorer is not None:
            self.entries.extend(self.release.finish(stopped=self.stops.stopped))
        if self.pending or self.entries:
            self._emit_delta()

    def _emit_delta(self) -> None:
        fields: dict[str, Any] = {"text": "".join(self.pending), "tokens": len(self.generated)}
        if self.entries:  # only requests that asked for logprobs have any
            fields["logprobs"] = list(self.entries)
        self.stream.emit("chat.delta", **fields)
        self.pending.clear()
        self.entries.clear()

    def record(self, outcome: Outcome) -> None:
        outcome.text = "".join(self.parts)
        outcome.finish_reason = self.finish
        outcome.completion_tokens = len(self.generated)
        if self.first_at is not None:
            outcome.prompt_tps = self.prompt_tps
            outcome.ttft_ms = round((self.first_at - self.started) * 1000, 1)
            if len(self.generated) > 1 and self.last_at and self.last_at > self.first_at:
                outcome.tokens_per_second = round(
                    (len(self.generated) - 1) / (self.last_at - self.first_at), 1
                )
        outcome.peak_memory_bytes = mx.get_peak_memory()

    def result(self, text: str) -> tuple[list[int] | None, str | None]:
        if not self.consistent:
            return None, None
        if not self.whole or not self.generated:
            return self.generated, None
        return self.generated, as_shown(self.prepared.loaded.tokenizer, text, self.generated[-1])
