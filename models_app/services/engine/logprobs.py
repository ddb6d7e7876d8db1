"""Per-token log probabilities (OpenAI's `logprobs`/`top_logprobs`) and `logit_bias`, in the worker.

mlx-lm's stream_generate yields each token with the full log-softmax vector its sampler saw (after the logits
processors, before temperature). Only a request that asked pays for anything: one `.item()` for the chosen
token and, for alternatives, an `mx.argpartition` over the vocabulary.

Entries are sent in the chat (OpenAI) shape, `{"token", "logprob", "bytes", "top_logprobs": [...]}`; the web
side reshapes them for the legacy completions API. `LogprobRelease` decides when an entry may go out, so each
entry travels with (or before) the text of its token, and entries of tokens cut by a stop string never do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, _byte_decoder

# OpenAI's figure for a token that cannot come (JSON has no -Infinity): tokens masked by response_format.
IMPOSSIBLE = -9999.0


class InvalidLogitBias(ValueError):
    pass


def _finite(value: float) -> float:
    return value if value > IMPOSSIBLE else IMPOSSIBLE


class TokenLogprobs:
    """Builds one entry per generated token for a request that asked for `top` alternatives (0..20)."""

    def __init__(self, tokenizer: Any, top: int) -> None:
        self.tokenizer = tokenizer
        self.top = top
        self._pieces: dict[int, tuple[str, list[int]]] = {}
        detokenizer = getattr(tokenizer, "_detokenizer", None)
        # Byte-level BPE: a token's exact bytes (also for tokens that are half a UTF-8 character).
        self._bytes_of = _bpe_bytes(tokenizer) if isinstance(detokenizer, BPEStreamingDetokenizer) else None

    def piece(self, token: int) -> tuple[str, list[int]]:
        cached = self._pieces.get(token)
        if cached is None:
            raw = self._bytes_of(token) if self._bytes_of else None
            if raw is None:
                text = self.tokenizer.decode([token])
                raw = text.encode("utf-8")
            else:
                text = raw.decode("utf-8", errors="replace")
            cached = self._pieces[token] = (text, list(raw))
        return cached

    def entry(self, token: int, logprobs: mx.array) -> dict[str, Any]:
        text, raw = self.piece(token)
        entry: dict[str, Any] = {
            "token": text,
            "logprob": _finite(logprobs[token].item()),
            "bytes": raw,
            "top_logprobs": [],
        }
        if self.top > 0:
            k = min(self.top, logprobs.shape[-1])
            ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
            values = logprobs[ids]
            for i in mx.argsort(-values).tolist():  # best first, as OpenAI lists them
                alt = int(ids[i].item())
                alt_text, alt_raw = self.piece(alt)
                entry["top_logprobs"].append(
                    {"token": alt_text, "logprob": _finite(values[i].item()), "bytes": alt_raw}
                )
        return entry


def _bpe_bytes(tokenizer: Any) -> Callable[[int], bytes | None]:
    decoder = _byte_decoder()

    def bytes_of(token: int) -> bytes | None:
        try:
            piece = tokenizer.convert_ids_to_tokens(token)
        except Exception:
            return None
        if not isinstance(piece, str) or not all(c in decoder for c in piece):
            return None  # a special or added token: its decoded text is its text
        return bytes(decoder[c] for c in piece)

    return bytes_of


class LogprobRelease:
    """Holds entries until the text of their token is visible.

    Positions are counted in UTF-8 bytes: a token's own bytes, and the bytes of the text the stop matcher lets
    through (exact for byte-level BPE tokenizers, the most common kind; close for others, whose single-token
    decode may differ from the running text by a space). mlx-lm's detokenizer may give a token's text one step
    late; counting the token's own bytes keeps each entry with its own text. An entry goes out once the
    visible text reaches the end of its token; when a stop string cuts the text, the entries of tokens that
    start before the cut go out and the rest (tokens wholly inside the cut text) are dropped. A token that
    only partly survives the cut keeps its entry: kept simple, and documented."""

    def __init__(self) -> None:
        self._held: deque[tuple[int, int, dict[str, Any]]] = deque()  # (start, end, entry)
        self._end = 0  # bytes of all tokens so far
        self._visible = 0  # bytes let through by the stop matcher

    def add(self, entry: dict[str, Any]) -> None:
        start = self._end
        self._end += len(entry["bytes"])
        self._held.append((start, self._end, entry))

    def shown(self, text: str) -> list[dict[str, Any]]:
        """`text` was let through; the entries whose token is now wholly visible."""
        self._visible += len(text.encode("utf-8"))
        out = []
        while self._held and self._held[0][1] <= self._visible:
            out.append(self._held.popleft()[2])
        return out

    def finish(self, *, stopped: bool) -> list[dict[str, Any]]:
        """The end: without a stop string everything left goes; after one, what starts before the cut."""
        out = [entry for start, _, entry in self._held if not stopped or start < self._visible]
        self._held.clear()
        return out


def logit_bias_processor(bias: dict[str, float], vocab_size: int) -> Callable[[mx.array, mx.array], mx.array]:
    """OpenAI's logit_bias as an mlx-lm logits processor: the bias added to those tokens' logits."""
    ids = [int(k) for k in bias]
    bad = [i for i in ids if i >= vocab_size]
    if bad:
        raise InvalidLogitBias(
            f"logit_bias names token {bad[0]}, but this model's vocabulary has {vocab_size:,} tokens."
        )
    index = mx.array(ids)
    values = mx.array([bias[k] for k in bias])

    def process(_tokens: mx.array, logits: mx.array) -> mx.array:
        return logits.at[..., index].add(values.astype(logits.dtype))

    return process
