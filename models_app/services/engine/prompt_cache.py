"""KV caches of recent prompts, so a follow-up turn only processes its new tokens.

The idea and the trimming rules are mlx_lm.server's `LRUPromptCache`; this version differs in two ways that
matter for a chat app with one generation at a time:

- A cache whose tokens are a prefix of the new prompt (the usual follow-up turn) is taken over, not copied:
  the old entry is superseded by the one stored after this turn anyway, and copying a long KV cache costs
  memory bandwidth for nothing.
- When the new prompt holds the entry's whole prompt and diverges only inside the answer generated after
  it (re-encoding an answer does not always give back the sampled tokens), it is the same conversation's
  next turn: the entry is trimmed in place. When it diverges inside the entry's prompt (another
  conversation sharing a system prompt, a regenerated answer), the entry is copied and the copy trimmed,
  so the other conversation keeps its cache.

Bounded by entry count (PROMPT_CACHE_ENTRIES) and bytes (PROMPT_CACHE_BYTES), least recently used first out.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any

import numpy as np
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    snapshot_id: int
    tokens: np.ndarray
    cache: list[Any]
    nbytes: int
    prompt_length: int  # tokens[:prompt_length] was the prompt, the rest was generated
    text: str | None = None  # what the tokens stand for in the conversation (see engine.prompt.splice)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    mismatches = np.flatnonzero(a[:n] != b[:n])
    return int(mismatches[0]) if len(mismatches) else n


def cache_nbytes(cache: list[Any]) -> int | None:
    try:
        return sum(c.nbytes for c in cache)
    except (NotImplementedError, AttributeError):
        return None


def cache_length(cache: list[Any]) -> int | None:
    """Tokens held by a KV cache, or None when the layers disagree or cannot say (recurrent layers)."""
    sizes = {c.size() for c in cache}
    return sizes.pop() if len(sizes) == 1 else None


class PromptCache:
    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._ids = count()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def fetch(self, snapshot_id: int, tokens: Sequence[int]) -> tuple[list[Any] | None, int]:
        """(cache, n): a KV cache holding tokens[:n], or (None, 0). The caller then processes tokens[n:],
        which is never empty: the model needs at least one token to produce the next logits."""
        prompt = np.asarray(tokens, dtype=np.int32)
        best_key, best_common = None, 0
        for key, entry in self._entries.items():
            if entry.snapshot_id == snapshot_id:
                common = common_prefix(entry.tokens, prompt)
                if common > best_common:
                    best_key, best_common = key, common
        usable = min(best_common, len(prompt) - 1)
        if best_key is None or usable <= 0:
            return None, 0
        entry = self._entries[best_key]
        if usable == len(entry.tokens):  # the entry is a prefix of this prompt: take it over as it is
            self._pop(best_key)
            return entry.cache, usable
        if not can_trim_prompt_cache(entry.cache):
            return None, 0
        if usable >= entry.prompt_length:
            self._pop(best_key)
            cache = entry.cache
        else:
            cache = copy.deepcopy(entry.cache)
        trim_prompt_cache(cache, len(entry.tokens) - usable)
        return cache, usable

    def prefixes(
        self, snapshot_id: int, decode: Callable[[Sequence[int]], str], *, limit: int = 4
    ) -> list[tuple[list[int], str]]:
        """The token sequences held for snapshot_id, most recently used first, each with its text (given at
        insert, else decoded once): the earlier turns a new prompt may start with (engine.prompt.splice)."""
        found: list[tuple[list[int], str]] = []
        for entry in reversed(self._entries.values()):
            if entry.snapshot_id != snapshot_id:
                continue
            if entry.text is None:
                entry.text = decode(entry.tokens.tolist())
            found.append((entry.tokens.tolist(), entry.text))
            if len(found) >= limit:
                break
        return found

    def insert(
        self,
        snapshot_id: int,
        tokens: Sequence[int],
        cache: list[Any],
        *,
        prompt_length: int | None = None,
        text: str | None = None,
    ) -> bool:
        """Keep cache, which holds the KV of tokens: the prompt (its first prompt_length tokens; all of them
        by default), then what was generated; `text`: what they stand for in the conversation, when known.
        Returns whether it was kept."""
        held = cache_length(cache)
        trimmable = can_trim_prompt_cache(cache)
        if held is None or held == 0:
            return False
        if held < len(tokens):
            tokens, text = tokens[:held], None
        elif held > len(tokens):
            # The generation loop runs one step ahead of what it yields, so the cache may hold an extra token.
            if not trimmable:
                return False
            trim_prompt_cache(cache, held - len(tokens))
        nbytes = cache_nbytes(cache)
        if nbytes is None or nbytes > self.max_bytes:
            return False
        array = np.asarray(tokens, dtype=np.int32)
        if trimmable:
            # An entry that is a prefix of this one is superseded: this one serves every prompt it would.
            for key, entry in list(self._entries.items()):
                if (
                    entry.snapshot_id == snapshot_id
                    and len(entry.tokens) <= len(array)
                    and common_prefix(entry.tokens, array) == len(entry.tokens)
                ):
                    self._pop(key)
        prompt_length = len(array) if prompt_length is None else min(prompt_length, len(array))
        self._entries[next(self._ids)] = _Entry(snapshot_id, array, cache, nbytes, prompt_length, text)
        self.nbytes += nbytes
        while self._entries and (len(self._entries) > self.max_entries or self.nbytes > self.max_bytes):
            self._pop(next(iter(self._entries)))
        return True

    def drop_snapshot(self, snapshot_id: int) -> None:
        for key in [k for k, e in self._entries.items() if e.snapshot_id == snapshot_id]:
            self._pop(key)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def _pop(self, key: int) -> _Entry:
        entry = self._entries.pop(key)
        self.nbytes -= entry.nbytes
        return entry
