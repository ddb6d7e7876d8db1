"""One answer as its tokens arrive from the batched loop: text (through the stop strings), log probabilities,
the chat.delta batching and the timing figures that end up in usage.

The batch loop (engine/batch.py) gets bare token ids from mlx-lm's BatchGenerator; this turns them into what
the requester sees, exactly as the single-request loop in generation.py does with stream_generate's output.
"""

from __future__ import annotations

import time
from typing import Any

from models_app.services.engine.logprobs import LogprobRelease, TokenLogprobs
from models_app.services.engine.sender import ReplyStream
from models_app.services.engine.stops import StopMatcher


class Answer:
    def __init__(
        self,
        *,
        stream: ReplyStream,
        tokenizer: Any,
        stops: list[str],
        logprobs: int | None,
        interval: float,
    ) -> None:
        self.stream = stream
        self.detokenizer = tokenizer.detokenizer  # a fresh copy per answer
        self.stops = StopMatcher(stops)
        # Log probabilities only when asked: nothing per token otherwise.
        self.scorer = TokenLogprobs(tokenizer, logprobs) if logprobs is not None else None
        self.release = LogprobRelease()
        self.interval = interval
        self.parts: list[str] = []
        self._pending: list[str] = []
        self._entries: list[dict[str, Any]] = []
        self.tokens = 0
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self.first_ns: int | None = None  # the same moment as a wall clock (the request's first_token hop)
        self.last_at: float | None = None
        self._last_flush = 0.0
        self.finish: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, token: int, logprobs: Any, finish_reason: str | None) -> None:
        """One generated token. Sets `finish` when the answer is over (end of sequence, length, stop string)."""
        self.last_at = time.perf_counter()
        if self.first_at is None:
            self.first_at = self.last_at
            self.first_ns = time.time_ns()
        self.tokens += 1
        # As stream_generate: the end-of-sequence token is counted but never decoded.
        if finish_reason != "stop":
            self.detokenizer.add_token(token)
        if finish_reason is not None:
            self.detokenizer.finalize()
        text = self.stops.feed(self.detokenizer.last_segment)
        if self.scorer is not None:
            # The end-of-sequence token (finish "stop") is not part of the answer: no entry, as OpenAI.
            if finish_reason != "stop":
                self.release.add(self.scorer.entry(token, logprobs))
            self._entries.extend(self.release.shown(text))
        if text:
            self.parts.append(text)
            self._pending.append(text)
        if self.stops.stopped:
            self.finish = "stop"
        elif finish_reason is not None:
            self.finish = finish_reason
        # The first text goes out at once (time to first token: _last_flush is 0), the rest in batches.
        elif (self._pending or self._entries) and self.last_at - self._last_flush >= self.interval:
            self._emit_delta()
            if not self._last_flush:
                # As the single-request loop: the first text is on its way before the next decode step
                # (ReplyStream.flush; without it the sender thread may wait for the GIL behind that step).
                self.stream.flush()
            self._last_flush = self.last_at

    def close(self, finish: str | None = None) -> None:
        """The end (finish: why, when the loop ended it, e.g. "cancelled"): what was held back goes out."""
        self.finish = self.finish or finish or "length"
        tail = self.stops.flush()
        if tail:
            self.parts.append(tail)
            self._pending.append(tail)
        if self.scorer is not None:
            self._entries.extend(self.release.finish(stopped=self.stops.stopped))
        if self._pending or self._entries:
            self._emit_delta()

    def _emit_delta(self) -> None:
        fields: dict[str, Any] = {"text": "".join(self._pending), "tokens": self.tokens}
        if self._entries:  # only requests that asked for logprobs have any
            fields["logprobs"] = list(self._entries)
        self.stream.emit("chat.delta", **fields)
        self._pending.clear()
        self._entries.clear()

    def figures(self) -> dict[str, Any]:
        """ttft_ms and tokens_per_second, as the single-request loop measures them."""
        figures: dict[str, Any] = {"ttft_ms": None, "tokens_per_second": None}
        if self.first_at is not None:
            figures["ttft_ms"] = round((self.first_at - self.started) * 1000, 1)
            if self.tokens > 1 and self.last_at and self.last_at > self.first_at:
                figures["tokens_per_second"] = round((self.tokens - 1) / (self.last_at - self.first_at), 1)
        return figures
