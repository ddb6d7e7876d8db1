"""Parsing and validation of OpenAI-style request bodies (/v1/chat/completions, /v1/completions).

Every field of OpenAI's request is either honoured, ignored because it cannot change the answer (`user`,
`store`, `metadata`, `service_tier`, ...: see IGNORED), or refused with a 400 naming it when it would change
the answer and is not implemented (`n` > 1, audio, web search, tool_choice "required", ...: see `_refuse`).
`response_format` json_object/json_schema is honoured by constrained decoding (engine/constrained.py).
README's OpenAI section has the table. Fields OpenAI does not define are ignored, as OpenAI-compatible
servers do (clients send other servers' extensions)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from models_app.services import inference

MAX_STOPS = inference.MAX_STOP_STRINGS
MAX_STOP_LENGTH = inference.MAX_STOP_LENGTH
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
IMAGE_PARTS = ("image_url", "input_image", "image")
AUDIO_PARTS = ("input_audio", "audio", "file")


class RequestError(ValueError):
    """A 400: `param` names the offending field, as OpenAI's error envelope does."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass
class CompletionRequest:
    kind: str  # "chat" | "text"
    model: str
    options: dict[str, Any]  # already through inference.normalize_options
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    user: str = ""
    tool_choice: Any = None
    # Log probabilities: None when not asked; else how many alternatives per token (0 = the chosen token only).
    top_logprobs: int | None = None


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
        raise RequestError("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise RequestError("The body must be a JSON object.")
    return body


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError("'stop' must be a string or a list of strings.", "stop")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_LENGTH for s in stops):
        raise RequestError(
            f"'stop' takes at most {MAX_STOPS} strings of at most {MAX_STOP_LENGTH} characters.", "stop"
        )
    return [s for s in stops if s]


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        # Nothing here can force a call (no constrained decoding): saying so beats an answer without one.
        raise RequestError(
            "Only tool_choice 'auto' and 'none' are supported: the model decides whether to call a tool.",
            "tool_choice",
        )
    if tools is None or tools == []:
        return None, choice
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RequestError("'tools' must be a list of tool objects.", "tools")
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise RequestError("Only tools of type 'function' are supported.", f"tools[{i}]")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise RequestError("Each function tool needs a 'name'.", f"tools[{i}].function.name")
    if choice is not None and not (isinstance(choice, str | dict)):
        raise RequestError("'tool_choice' must be a string or an object.", "tool_choice")
    if choice == "none":
        # The model is told about no tools at all: the cheapest way to make sure it calls none.
        return None, choice
    return tools, choice


# OpenAI's sampling names that the worker understands too (see models_app.services.inference.normalize_options).
_PASSED_THROUGH = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)


# Accepted and ignored: they cannot change the answer (bookkeeping, routing, caching hints, latency hints).
IGNORED = (
    "user",
    "store",
    "metadata",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "parallel_tool_calls",
    "prediction",
)

# Chat fields that would change the answer and are not implemented: (field, message). Any non-null value is
# a 400 naming the field; response_format, modalities and tool_choice have their own checks (some values pass).
_REFUSED_CHAT: tuple[tuple[str, str], ...] = (
    ("audio", "Audio output is not supported: the models here write text."),
    ("web_search_options", "Web search is not supported."),
    ("functions", "'functions' (deprecated) is not supported: send 'tools' instead."),
    ("function_call", "'function_call' (deprecated) is not supported: send 'tools' and 'tool_choice'."),
    (
        "reasoning_effort",
        "'reasoning_effort' is not supported: a model here reasons as its chat template says.",
    ),
    ("verbosity", "'verbosity' is not supported."),
    ("moderation", "'moderation' is not supported."),
)


def _refuse(body: dict[str, Any], refused: tuple[tuple[str, str], ...]) -> None:
    for name, message in refused:
        if body.get(name) is not None:
            raise RequestError(message, name)


def _response_format(body: dict[str, Any]) -> str | None:
    """OpenAI's response_format as an llguidance grammar the worker constrains the output with (None: text).
    Compiled and checked here, so a bad schema is a 400 before anything is queued."""
    value = body.get("response_format")
    if value is None or value == {"type": "text"} or value == "text":
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError(
                "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}.",
                "response_format",
            )
    else:
        raise RequestError(
            "response_format must be {'type': 'text'}, {'type': 'json_object'} or "
            "{'type': 'json_schema', 'json_schema': {...}}.",
            "response_format",
        )
    import llguidance  # only requests that constrain their output pay for the import

    try:
        # Compact JSON (no free whitespace): a weak model cannot wander off into blank lines.
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False}
        )
    except (ValueError, TypeError) as exc:
        raise RequestError(f"response_format: the schema is not usable ({exc}).", "response_format") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        raise RequestError(f"response_format: the schema is not supported ({error}).", "response_format")
    return grammar


def _modalities(body: dict[str, Any]) -> None:
    value = body.get("modalities")
    if value is None or value == ["text"]:
        return
    raise RequestError("Only modalities ['text'] is supported.", "modalities")


def _top_logprobs_chat(body: dict[str, Any]) -> int | None:
    """Chat: `logprobs: true` turns them on, `top_logprobs` (0..20) asks for alternatives (and needs it)."""
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError("'logprobs' must be true or false.", "logprobs")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= inference.MAX_TOP_LOGPROBS:
            raise RequestError(
                f"'top_logprobs' must be a whole number from 0 to {inference.MAX_TOP_LOGPROBS}.",
                "top_logprobs",
            )
        if not logprobs:
            raise RequestError("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    return (top or 0) if logprobs else None


# The legacy completions API's limit for `logprobs`.
MAX_LEGACY_LOGPROBS = 5


def _top_logprobs_text(body: dict[str, Any]) -> int | None:
    """Completions: `logprobs` is the number of alternatives (0..5); present means on."""
    value = body.get("logprobs")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LEGACY_LOGPROBS:
        raise RequestError(f"'logprobs' must be a whole number from 0 to {MAX_LEGACY_LOGPROBS}.", "logprobs")
    return value


def _options(
    body: dict[str, Any],
    *,
    tools: list[dict[str, Any]] | None = None,
    top_logprobs: int | None = None,
    grammar: str | None = None,
) -> dict[str, Any]:
    """The generation options, validated by the inference service (one set of rules for chat and API)."""
    n = body.get("n")
    if n is not None and n != 1:
        raise RequestError("Only n=1 is supported: ask for several completions with several requests.", "n")
    raw: dict[str, Any] = {name: body.get(name) for name in _PASSED_THROUGH}
    # max_completion_tokens is the newer name; absent both, the worker fills the rest of the context window.
    raw["max_tokens"] = body.get("max_completion_tokens", body.get("max_tokens"))
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError("'seed' must be an integer.", "seed")
        raw["seed"] = seed % 2**32  # OpenAI takes any integer; MLX's generator takes 32 bits
    raw["stop"] = _stop(body.get("stop"))
    raw["tools"] = tools
    raw["logprobs"] = top_logprobs
    raw["logit_bias"] = body.get("logit_bias")
    raw["grammar"] = grammar
    for name, value in raw.items():
        if isinstance(value, str) and name not in ("stop", "grammar"):
            raise RequestError(f"'{name}' must be a number.", name)
    try:
        return inference.normalize_options(raw)
    except inference.InvalidOptions as exc:
        param = exc.param
        if param == "max_tokens" and "max_completion_tokens" in body:
            param = "max_completion_tokens"
        if param is None:
            raise RequestError(str(exc)) from None
        named = param in raw or param == "response_format"  # the grammar travels as "grammar"
        raise RequestError(f"'{param}' {exc.problem}.", param if named else None) from None


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("'model' is required: one of the ids listed by GET /v1/models.", "model")
    return model.strip()


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object.", "stream_options")
    return stream, bool(stream and options.get("include_usage"))


def _content(content: Any, index: int, model: str) -> str:
    """Message content as text: a string, or a list of text parts joined (as mlx_lm.server does)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(
            "Message content must be a string or a list of content parts.", f"messages[{index}].content"
        )
    texts = []
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in IMAGE_PARTS:
            raise RequestError(
                f"The model '{model}' is text-only: image content parts are not supported. "
                "Send text only, or pick a vision model.",
                param,
                "image_not_supported",
            )
        if kind in AUDIO_PARTS:
            raise RequestError(
                f"The model '{model}' takes text only: '{kind}' parts are not supported.", param
            )
        if kind not in ("text", "input_text") or not isinstance(part.get("text"), str):
            raise RequestError("Content parts must be {'type': 'text', 'text': '...'}.", param)
        texts.append(part["text"])
    return "".join(texts)


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """An assistant turn's tool calls, with arguments as objects: chat templates iterate over them."""
    if not isinstance(calls, list):
        raise RequestError("'tool_calls' must be a list.", f"messages[{index}].tool_calls")
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise RequestError("Each tool call needs a 'function'.", f"messages[{index}].tool_calls")
        function = dict(call["function"])
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            # Unparseable arguments stay a string: a template may print them as they are.
            with contextlib.suppress(ValueError):
                function["arguments"] = json.loads(arguments) if arguments.strip() else {}
        out.append({**call, "function": function})
    return out


def _check_size(**request: Any) -> None:
    try:
        inference.check_request_size(**request)
    except inference.RequestTooLarge as exc:
        raise RequestError(str(exc), exc.param, code="request_too_large") from exc


def _messages(body: dict[str, Any], model: str) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list.", "messages")
    _check_size(messages=messages)
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError("Each message must be an object.", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"'role' must be one of {', '.join(ROLES)}.", f"messages[{i}].role")
        # "developer" is OpenAI's new name for system; most chat templates only know "system".
        clean: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": _content(message.get("content"), i, model),
        }
        if role == "assistant" and message.get("tool_calls"):
            clean["tool_calls"] = _tool_calls(message["tool_calls"], i)
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                clean[key] = message[key]
        out.append(clean)
    return out


def parse_chat(body: dict[str, Any]) -> CompletionRequest:
    model = _model(body)
    stream, include_usage = _stream(body)
    messages = _messages(body, model)
    _refuse(body, _REFUSED_CHAT)
    _modalities(body)
    tools, tool_choice = _tools(body)
    top_logprobs = _top_logprobs_chat(body)
    grammar = _response_format(body)
    options = _options(body, tools=tools, top_logprobs=top_logprobs, grammar=grammar)
    user = body.get("user")
    return CompletionRequest(
        kind="chat",
        model=model,
        options=options,
        stream=stream,
        include_usage=include_usage,
        messages=messages,
        user=user if isinstance(user, str) else "",
        tool_choice=tool_choice,
        top_logprobs=top_logprobs,
    )


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    model = _model(body)
    stream, include_usage = _stream(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(
            "'prompt' must be a string (token arrays and batches are not supported).", "prompt"
        )
    _check_size(prompt=prompt)
    if body.get("echo"):
        raise RequestError("'echo' is not supported.", "echo")
    if body.get("suffix"):
        raise RequestError("'suffix' (fill in the middle) is not supported.", "suffix")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise RequestError("Only best_of=1 is supported.", "best_of")
    top_logprobs = _top_logprobs_text(body)
    user = body.get("user")
    return CompletionRequest(
        kind="text",
        model=model,
        options=_options(body, top_logprobs=top_logprobs, grammar=_response_format(body)),
        top_logprobs=top_logprobs,
        stream=stream,
        include_usage=include_usage,
        prompt=prompt,
        user=user if isinstance(user, str) else "",
    )
