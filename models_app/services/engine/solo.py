"""A model's only request, decoded by mlx-lm's `generate_step` instead of a BatchGenerator of one.

A BatchGenerator step carries what a batch needs (a mask, left padding, per-row logprobs) even for one row: it
cost ~11% more CPU per token than `generate_step` here, which is what `stream_generate` and a lone request of
`mlx_lm.server`'s single path run. So the batch loop (engine/batch.py) gives a request that finds its model idle
to a `Solo`; the moment a second request of that model arrives, the solo moves into the model's BatchGenerator
with its KV cache (`into`), and both go on batched. The other way too: the last answer left in a batch, past
its prompt, goes on solo with its KV cache (`resume`): a long prompt's answer (its prompt was processed in the
batch's paced chunks), or the last of several. Only a request whose prompt takes one model call at most
goes solo (its prompt then blocks the loop no longer than a batch step would), and only one without logits
processors (penalties, logit_bias, response_format see the whole prompt in the batch: the batch path keeps that).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, generate_step

if TYPE_CHECKING:
    from models_app.services.engine.generation import Prepared


def can_go_solo(prepared: Prepared, step: int) -> bool:
    uncached = len(prepared.prompt_tokens) - prepared.cached
    return 0 < uncached <= step and not prepared.processors


class Solo:
    def __init__(
        self,
        prepared: Prepared,
        eos: set[int],
        *,
        cache: list[Any] | None = None,
        generated: Sequence[int] = (),
    ) -> None:
        """A fresh answer, from its prompt; or, given `cache` and `generated`, one the batch began (`resume`)."""
        self.prepared = prepared
        self.eos = eos
        self.generated: list[int] = list(generated)
        self.cache = prepared.cache if cache is None else cache
        if self.generated:
            # The cache holds the last token already; fed again, its logits give the next one (as `into`).
            for layer in self.cache:
                layer.trim(1)
            feed = self.generated[-1:]
        else:
            feed = prepared.prompt_tokens[prepared.cached :]
        self._steps: Iterator[tuple[Any, Any]] = generate_step(
            mx.array(feed),
            prepared.loaded.model,
            max_tokens=prepared.max_tokens - len(self.generated),
            sampler=prepared.sampler,
            prompt_cache=self.cache,
            prefill_step_size=max(1, len(feed)),
        )

    @classmethod
    def resume(cls, prepared: Prepared, eos: set[int], cache: list[Any], tokens: list[int]) -> Solo | None:
        """The answer a batch began goes on solo: `cache` holds `tokens` (its prompt, then what it generated).
        None when it cannot: a cache that cannot drop its last token, or an answer already at max_tokens."""
        generated = list(tokens[len(prepared.prompt_tokens) :])
        if (
            list(tokens[: len(prepared.prompt_tokens)]) != prepared.prompt_tokens
            or not generated
            or len(generated) >= prepared.max_tokens
            or not all(layer.is_trimmable() for layer in cache)
        ):
            return None
        return cls(prepared, eos, cache=cache, generated=generated)

    def next(self) -> tuple[int, Any, str | None]:
        """The next token, its log probabilities, and why the answer ends with it (None: it goes on)."""
        token, logprobs = next(self._steps)
        token = int(token)
        self.generated.append(token)
        if token in self.eos:
            return token, logprobs, "stop"
        if len(self.generated) >= self.prepared.max_tokens:
            return token, logprobs, "length"
        return token, logprobs, None

    @property
    def tokens(self) -> list[int]:
        """What its KV cache holds: generate_step feeds each token to the model before handing it out."""
        return self.prepared.prompt_tokens + self.generated

    def into(self, generator: BatchGenerator) -> int:
        """Hand this answer to the model's BatchGenerator, to go on there; returns its uid."""
        prepared = self.prepared
        self._steps.close()  # the step computed ahead for the next token is dropped
        if not self.generated:  # never stepped: it joins as any request does
            prompt, held, cache = prepared.prompt_tokens[prepared.cached :], prepared.cached, self.cache
        else:
            # The cache holds the last token already; the batch feeds it again to sample the next one.
            cache = self.cache
            for layer in cache:
                layer.trim(1)
            prompt, held = self.generated[-1:], len(self.tokens) - 1
        (uid,) = generator.insert(
            [prompt],
            max_tokens=[prepared.max_tokens - len(self.generated)],
            caches=[cache],
            all_tokens=[self.tokens[:held]],
            samplers=[prepared.sampler],
            logits_processors=[prepared.processors],
        )
        return uid
