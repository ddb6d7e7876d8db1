"""Constrained decoding for OpenAI's `response_format` (json_object, json_schema), with llguidance.

llguidance (guidance-ai, a Rust library with Python bindings and no dependencies) compiles a JSON schema into
a grammar and, token by token, tells which tokens may come next. Here that is an mlx-lm logits processor:
masked tokens get -inf, and once the JSON is complete only end-of-sequence is left, so the answer stops there.
llguidance's own MLX helper is a Metal kernel; this builds the mask with numpy so it runs on the CPU build too.

The web side compiles and validates the grammar (a bad schema is a 400 before anything is queued); the worker
gets the grammar text and only builds the matcher.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np


class ConstraintError(ValueError):
    pass


_tokenizers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _ll_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a loaded model's tokenizer (about a second for a large vocabulary: kept with it)."""
    import llguidance.hf

    with _lock:
        cached = _tokenizers.get(tokenizer)
        if cached is None:
            hf = getattr(tokenizer, "_tokenizer", tokenizer)
            try:
                cached = llguidance.hf.from_tokenizer(
                    hf, n_vocab=vocab_size, eos_token=sorted(tokenizer.eos_token_ids)
                )
            except ValueError as exc:  # "Only fast tokenizers are supported"
                raise ConstraintError(
                    f"response_format cannot be honoured with this model's tokenizer ({exc})."
                ) from None
            _tokenizers[tokenizer] = cached
        return cached


def opens_thinking(tokenizer: Any, prompt_tokens: list[int]) -> bool:
    """Whether the prompt ends inside a think block the model is expected to close (the generation prompt of
    some reasoning models opens one): forced JSON there would be read as reasoning, not as the answer."""
    start = getattr(tokenizer, "think_start_id", None) if getattr(tokenizer, "has_thinking", False) else None
    if start is None:
        return False
    end = getattr(tokenizer, "think_end_id", None)
    tail = prompt_tokens[-8:]
    return start in tail and (end is None or end not in tail[tail.index(start) :])


def grammar_processor(
    grammar: str, tokenizer: Any, vocab_size: int
) -> Callable[[mx.array, mx.array], mx.array]:
    """An mlx-lm logits processor that keeps the output inside `grammar`."""
    import llguidance

    matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, vocab_size), grammar)
    if matcher.is_error():
        raise ConstraintError(f"response_format: {matcher.get_error()}")
    first = True

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        nonlocal first
        # mlx-lm calls processors with every token so far; from the second call on, the last one is the token
        # sampled under the previous mask.
        if not first:
            matcher.consume_token(int(tokens[-1].item()))
        first = False
        if matcher.is_error():  # cannot happen for a token the mask allowed; end cleanly rather than loop
            raise ConstraintError(f"response_format: {matcher.get_error()}")
        words = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint32)
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)
        width = logits.shape[-1]
        if allowed.size < width:
            allowed = np.pad(allowed, (0, width - allowed.size))
        return mx.where(mx.array(allowed[:width]), logits, -mx.inf)

    return process
