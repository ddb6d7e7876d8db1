"""From a request to prompt tokens: the chat template, and the context window.

When a conversation outgrows the model's context window, the oldest turns go first (the system prompt
stays) and the user is told; when even the last user message does not fit, the request fails with
`context_too_long` rather than silently cutting the user's own words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class PromptError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Prompt:
    tokens: list[int]
    dropped_messages: int = 0
    spliced: int = 0  # tokens[:spliced] are an earlier turn's, kept as the model saw and wrote them
    text: str | None = None  # the chat template's text these tokens stand for (chat prompts that fit whole)

    @property
    def notice(self) -> str:
        if not self.dropped_messages:
            return ""
        n = self.dropped_messages
        return (
            f"The {n} oldest message{'s were' if n > 1 else ' was'} left out so the conversation fits the "
            "model's context window."
        )


def answer_reserve(context_length: int, max_tokens: int | None) -> int:
    """Room kept for the answer when deciding what fits: what was asked for, but never more than a quarter of
    the window, so a long max_tokens does not evict a whole conversation."""
    wanted = max_tokens if max_tokens else 256
    return max(1, min(wanted, context_length // 4))


def render_chat(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> str | None:
    """The chat template's text for messages (with the generation prompt), or None for a model without one."""
    if not getattr(tokenizer, "has_chat_template", False):
        return None
    try:
        return str(
            tokenizer.apply_chat_template(
                list(messages), tools=tools or None, add_generation_prompt=True, tokenize=False
            )
        )
    except Exception as exc:  # jinja raises on what a template refuses (e.g. roles that do not alternate)
        raise PromptError(
            "invalid_request", f"The model's chat template refused the messages: {exc}"
        ) from exc


def encode_chat(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[int]:
    if getattr(tokenizer, "has_chat_template", False):
        try:
            tokens = tokenizer.apply_chat_template(
                list(messages), tools=tools or None, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises on what a template refuses (e.g. roles that do not alternate)
            raise PromptError(
                "invalid_request", f"The model's chat template refused the messages: {exc}"
            ) from exc
        return list(tokens)
    # A base model without a template: plain text, one message per paragraph.
    text = "\n\n".join(str(m.get("content") or "") for m in messages)
    return list(tokenizer.encode(text))


def encode_rendered(tokenizer: Any, text: str) -> list[int]:
    """A chat template's text as tokens: its special tokens are in the text, none is added."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def splice(
    tokenizer: Any, text: str, prefix: Sequence[int], prefix_text: str | None = None
) -> list[int] | None:
    """`prefix` (the tokens of an earlier turn: its prompt, then the answer as the model generated it) followed
    by the tokens of the rest of `text` (the rendered conversation), when `prefix_text` (what `prefix` stands
    for; decoded from it when None) is the start of `text`; else None.

    Re-encoding an answer does not always give back the ids the model sampled (the tokenizer prefers other
    merges), so a conversation rendered and encoded anew diverges from the KV cache inside the previous answer,
    and the answer is processed again. Keeping the sampled ids and encoding only what follows them (the end of
    that turn, the new message, the generation prompt) lets turn N process its new message only. The text is
    the template's own rendering, so the model sees exactly the conversation it would without the cache; only
    the previous answer keeps the ids it was written in. An earlier turn's text is its prompt's text and the
    answer as the client received it: mlx-lm's streaming detokenizer drops the space an answer's first token
    starts with, so the model wrote " Hello" and the conversation says "Hello"; the ids stay the model's."""
    if not prefix:
        return None
    if prefix_text is None:
        prefix_text = decode_exact(tokenizer, prefix)
    if not prefix_text or not text.startswith(prefix_text):
        return None
    rest = text[len(prefix_text) :]
    tail = encode_rendered(tokenizer, rest) if rest else []
    if rest and decode_exact(tokenizer, tail) != rest:
        return None
    return [*prefix, *tail]


def decode_exact(tokenizer: Any, tokens: Sequence[int]) -> str:
    """Tokens as text with their special tokens and spacing kept, as a template writes them."""
    return str(tokenizer.decode(list(tokens), skip_special_tokens=False, clean_up_tokenization_spaces=False))


def encode_text(tokenizer: Any, text: str) -> list[int]:
    # As mlx-lm's stream_generate does: add BOS unless the text already starts with it.
    bos = getattr(tokenizer, "bos_token", None)
    return list(tokenizer.encode(text, add_special_tokens=bos is None or not text.startswith(bos)))


def _too_long(n_tokens: int, context_length: int, reserve: int) -> PromptError:
    return PromptError(
        "context_too_long",
        f"The message is too long for this model: the prompt needs {n_tokens} tokens, and the model's context "
        f"window is {context_length} tokens, {reserve} of them kept for the answer. Shorten the message or "
        "start a new conversation.",
    )


def build_chat_prompt(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    context_length: int,
    reserve: int,
    tools: list[dict[str, Any]] | None = None,
    prefixes: Sequence[tuple[Sequence[int], str | None]] = (),
) -> Prompt:
    """The prompt for messages. `prefixes`: (tokens, their text or None) of earlier turns of this conversation
    as the model saw and wrote them, best first; the first that spells the start of the rendered conversation
    is kept as it is (see `splice`), and only what follows it is encoded."""
    limit = context_length - reserve
    text = render_chat(tokenizer, messages, tools)
    if text is not None:
        for prefix, prefix_text in prefixes:
            spliced = splice(tokenizer, text, prefix, prefix_text)
            if spliced is not None and len(spliced) <= limit:
                return Prompt(spliced, spliced=len(prefix), text=text)
    # The text rendered once: what apply_chat_template(tokenize=True) does, without rendering it again.
    tokens = encode_chat(tokenizer, messages, tools) if text is None else encode_rendered(tokenizer, text)
    if len(tokens) <= limit:
        return Prompt(tokens, text=text)
    leading = 0
    while leading < len(messages) and messages[leading].get("role") == "system":
        leading += 1
    system, turns = list(messages[:leading]), list(messages[leading:])
    # Cut only where a user turn begins, so an answer never appears without its question.
    starts = [i for i, m in enumerate(turns) if m.get("role") == "user"] or [len(turns) - 1]
    starts = [s for s in starts if s > 0] or starts

    def attempt(cut: int) -> list[int]:
        return encode_chat(tokenizer, system + turns[cut:], tools)

    # Fewer dropped turns means a longer prompt: binary search the first cut that fits.
    lo, hi, best = 0, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = attempt(starts[mid])
        if len(candidate) <= limit:
            best, hi = (starts[mid], candidate), mid - 1
        else:
            lo = mid + 1
    if best is None:
        raise _too_long(len(attempt(starts[-1])), context_length, reserve)
    cut, tokens = best
    return Prompt(tokens, dropped_messages=cut)


def build_text_prompt(tokenizer: Any, text: str, *, context_length: int, reserve: int) -> Prompt:
    tokens = encode_text(tokenizer, text)
    if len(tokens) > context_length - reserve:
        raise _too_long(len(tokens), context_length, reserve)
    return Prompt(tokens)


def as_shown(tokenizer: Any, text: str, last_token: int) -> str:
    """A whole answer as the conversation holds it after the prompt: its text, and the end-of-sequence token's
    text, which the stream leaves out."""
    ended = last_token in tokenizer.eos_token_ids
    return text + (decode_exact(tokenizer, [last_token]) if ended else "")
