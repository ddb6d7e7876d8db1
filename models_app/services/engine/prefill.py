"""Prompt processing (prefill) in chunks paced by the model's measured prompt speed.

mlx-lm's own loop feeds the prompt in chunks of one fixed size and can only be interrupted between them. A
fixed 512-token chunk took 63 s on a slow CPU model, so Stop (or a client that went away) waited that long and
so did the next user. Here each chunk is sized from the speed measured on the previous ones (and remembered per
loaded model), so one takes about CHUNK_SECONDS on any machine and Stop is noticed within about that long.
On a fast model the chunks quickly reach MAX_STEP, where the per-chunk cost is negligible.

A chunk is never smaller than MIN_STEP, though: each model call has a fixed cost (every layer's weights read
and dequantized, every kernel launched) of about half a token's compute on a CPU, so on a slow model, where
0.25 s is 2 tokens, the prompt ran ~20% slower than in one pass (mlx_lm.server's, stream_generate's), and a
follow-up turn's new message slower still beside its long cached context. 8 tokens a call cost within a few
percent of one pass; Stop then waits at most 8 tokens' time (~1 s at 8 tokens/s, the slowest CPU seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

CHUNK_SECONDS = 0.25
# Below this, a call's fixed cost outweighs what a shorter wait for Stop is worth (see above).
MIN_STEP = 8
MAX_STEP = 512
# A model never measured yet starts small: on the slowest machines 16 tokens still take about a second.
FIRST_STEP = 16


@dataclass
class PrefillPace:
    """What one loaded model has shown of its prompt speed (tokens/s), 0 until measured."""

    tokens_per_second: float = 0.0

    def next_step(self) -> int:
        if self.tokens_per_second <= 0:
            return FIRST_STEP
        return max(MIN_STEP, min(MAX_STEP, int(self.tokens_per_second * CHUNK_SECONDS)))

    def observe(self, tokens: int, seconds: float) -> None:
        rate = tokens / max(seconds, 1e-6)
        # Smoothed, so one chunk slowed by another process does not halve the next one.
        self.tokens_per_second = (
            rate if self.tokens_per_second <= 0 else 0.5 * (self.tokens_per_second + rate)
        )


@dataclass
class Prefilled:
    tokens: int  # fed into the KV cache
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else 0.0


def prefill(
    forward: Callable[[Sequence[int]], None],
    tokens: Sequence[int],
    pace: PrefillPace,
    *,
    after_chunk: Callable[[int, int], None],
    clock: Callable[[], float] = time.perf_counter,
) -> Prefilled:
    """Feed all but the last of `tokens` through `forward` (which runs the model on a chunk and evaluates the
    KV cache), chunk by chunk. `after_chunk(processed, total)` runs between chunks: it reports progress and
    raises to stop. The last token is left for the generation step, which needs its logits."""
    total = len(tokens)
    done = 0
    started = clock()
    while total - done > 1:
        step = min(pace.next_step(), total - done - 1)
        chunk_started = clock()
        forward(tokens[done : done + step])
        pace.observe(step, clock() - chunk_started)
        done += step
        after_chunk(done, total)
    return Prefilled(tokens=done, seconds=clock() - started)


def mlx_forward(model: Any, cache: list[Any]) -> Callable[[Sequence[int]], None]:
    """The model on a chunk of tokens, the KV cache evaluated, as mlx-lm's prefill does each step."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    def forward(chunk: Sequence[int]) -> None:
        with mx.stream(generation_stream):
            model(mx.array(chunk)[None], cache=cache)
            mx.eval([c.state for c in cache])
        mx.clear_cache()

    return forward


def with_prompt_context(processors: list[Any] | None, context: Sequence[int]) -> list[Any] | None:
    """Logits processors (repetition and presence penalties) see the prompt tokens mlx-lm would have shown
    them, although those tokens were fed before the generation call."""
    if not processors or not context:
        return processors
    import mlx.core as mx

    prefix = mx.array(list(context))

    def wrap(processor: Any) -> Any:
        return lambda tokens, logits: processor(mx.concatenate([prefix, tokens]), logits)

    return [wrap(p) for p in processors]
