"""OpenAI's response objects, streamed (`data: {...}` chunks, then `data: [DONE]`) and whole.

The shapes follow the OpenAI API reference (chat.completion.chunk, chat.completion, text_completion): a role
chunk first, content/reasoning/tool-call deltas, a final chunk with finish_reason and an empty delta, and,
with `stream_options.include_usage`, one more chunk with empty choices and the usage (every earlier chunk
then carries `"usage": null`, as OpenAI's do).

Log probabilities, when asked (`logprobs`), come from the worker with the text of their tokens, in the chat
shape; each chunk carries the entries of the tokens that arrived since the previous chunk (entries whose text
the parser still holds back wait for the next chunk, the rest ride on the finish chunk). The legacy
completions shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) is built from the same entries;
`text_offset` counts characters from the start of the completion (there is no echo)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from models_app.openai.parsing import Piece

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
FINGERPRINT = "mlx-control-room"


def data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_object(
    message: str, *, type: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def usage_object(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(usage.get("cached_tokens") or 0)},
    }


@dataclass
class Completion:
    """One response's identity and the state its chunks share."""

    model: str
    chat: bool
    include_usage: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    tool_index: int = 0
    logprobs: bool = False  # the request asked for them
    _waiting: list[dict[str, Any]] = field(default_factory=list)  # entries not yet sent (streamed)
    _all: list[dict[str, Any]] = field(default_factory=list)  # every entry (whole)
    _offset: int = 0  # legacy text_offset of the next token

    @property
    def response_id(self) -> str:
        return f"chatcmpl-{self.id}" if self.chat else f"cmpl-{self.id}"

    def _base(self, object_type: str) -> dict[str, Any]:
        base = {
            "id": self.response_id,
            "object": object_type,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
        }
        return base

    # --- streamed -------------------------------------------------------------------------------------------

    # --- log probabilities ----------------------------------------------------------------------------------

    def add_logprobs(self, entries: list[dict[str, Any]] | None) -> None:
        if self.logprobs and entries:
            self._waiting.extend(entries)
            self._all.extend(entries)

    def _logprobs_object(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not self.logprobs or not entries:
            return None
        if self.chat:
            return {"content": entries, "refusal": None}
        tokens, token_logprobs, top, offsets = [], [], [], []
        for entry in entries:
            tokens.append(entry["token"])
            token_logprobs.append(entry["logprob"])
            # OpenAI: "the logprob of the sampled token is always returned", so up to logprobs + 1 here.
            alternatives = {alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]}
            alternatives.setdefault(entry["token"], entry["logprob"])
            top.append(alternatives)
            offsets.append(self._offset)
            self._offset += len(entry["token"])
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top,
            "text_offset": offsets,
        }

    def _take(self) -> dict[str, Any] | None:
        entries, self._waiting = self._waiting, []
        return self._logprobs_object(entries)

    # --- streamed (chunks) -----------------------------------------------------------------------------------

    def chunk(
        self, delta: dict[str, Any] | None = None, *, text: str = "", finish_reason: str | None = None
    ) -> bytes:
        logprobs = self._take() if self._waiting else None
        if self.chat:
            choice = {"index": 0, "delta": delta or {}, "logprobs": logprobs, "finish_reason": finish_reason}
            payload = {**self._base("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
            payload = {**self._base("text_completion"), "choices": [choice]}
        if self.include_usage:
            payload["usage"] = None
        return data(payload)

    def role_chunk(self) -> bytes:
        return self.chunk({"role": "assistant", "content": ""}) if self.chat else b""

    def piece_chunks(self, pieces: list[Piece]) -> list[bytes]:
        out = []
        for piece in pieces:
            if not self.chat:
                if piece.text:
                    out.append(self.chunk(text=piece.text))
            elif piece.kind == "content" and piece.text:
                out.append(self.chunk({"content": piece.text}))
            elif piece.kind == "reasoning" and piece.text:
                # Both names: DeepSeek/vLLM clients read reasoning_content, newer ones (and mlx_lm) reasoning.
                out.append(self.chunk({"reasoning_content": piece.text, "reasoning": piece.text}))
            elif piece.kind == "tool_call" and piece.tool_call:
                call = {"index": self.tool_index, **piece.tool_call}
                self.tool_index += 1
                out.append(self.chunk({"tool_calls": [call]}))
        return out

    def final_chunks(self, finish_reason: str, usage: dict[str, Any] | None) -> list[bytes]:
        out = [self.chunk({}, finish_reason=finish_reason)]
        if self.include_usage:
            out.append(data({**self._base(self._object(True)), "choices": [], "usage": usage_object(usage)}))
        out.append(DONE)
        return out

    def _object(self, streamed: bool) -> str:
        if not self.chat:
            return "text_completion"
        return "chat.completion.chunk" if streamed else "chat.completion"

    # --- whole ---------------------------------------------------------------------------------------------------

    def whole(
        self,
        *,
        content: str,
        reasoning: str,
        tool_calls: list[dict[str, Any]],
        finish_reason: str,
        usage: dict[str, Any] | None,
    ) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content or None}
            if reasoning:
                message["reasoning_content"] = reasoning
                message["reasoning"] = reasoning
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}
        if self.logprobs:
            self._offset = 0
            choice["logprobs"] = self._logprobs_object(self._all) or (
                {"content": [], "refusal": None}
                if self.chat
                else {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            )
        return {**self._base(self._object(False)), "choices": [choice], "usage": usage_object(usage)}
