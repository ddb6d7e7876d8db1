"""Reasoning and tool calls out of a model's streamed text, the way mlx_lm.server does it.

mlx-lm's tokenizer knows each model's markers (`<think>`/`</think>`, `<tool_call>`/`</tool_call>`, ...) and a
parser per tool-call format (mlx_lm/tool_parsers/*). The web process never loads a tokenizer and may not have
the model's files at all (another machine holds them), so the worker that has the files reads the markers from
them (`markers_for_path`: tokenizer_config.json, chat_template.jinja and the added tokens, with the same
inference rules as mlx_lm.tokenizer_utils) into the snapshot's row (models_app/services/model_markers.py), and
the API reads them back with `Markers.from_payload`. `StreamParser` then splits the text as it arrives
into content, reasoning and tool calls, holding back only what could be the start of a marker.

Pure Python with no MLX import, so it can run in the worker as well.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import re
import sys
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models_app.services.hub_guard import MetadataError, read_metadata

log = logging.getLogger(__name__)

# mlx_lm.tokenizer_utils._infer_thinking: single-token pairs, checked in this order.
THINK_PAIRS = (
    ("<think>", "</think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
)

# mlx_lm.tokenizer_utils._infer_tool_parser, in its order: (needles that must all be in the template, parser).
_TEMPLATE_TOOL_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("<minimax:tool_call>",), "minimax_m2"),
    (("<|tool_call>", "<tool_call|>"), "gemma4"),
    (("<start_function_call>",), "function_gemma"),
    (("<longcat_tool_call>",), "longcat"),
    (("<arg_key>",), "glm47"),
    (("<|tool_list_start|>",), "pythonic"),
    (("<|tool_call_start|>",), "pythonic"),
    (("<tool_call>\\n<function=",), "qwen3_coder"),
    (("<tool_call>\n<function=",), "qwen3_coder"),
    (("<|tool_calls_section_begin|>",), "kimi_k2"),
    (('<function name="', '<param name="'), "minicpm5"),
    (("[TOOL_CALLS]",), "mistral"),
    (("<atem:function_calls>",), "muse_spark"),
    (("<tool_call>", "tool_call.name"), "json_tools"),
)


@dataclass(frozen=True)
class Markers:
    think_start: str | None = None
    think_end: str | None = None
    tool_parser: str | None = None  # a module name in mlx_lm.tool_parsers
    tool_start: str | None = None
    tool_end: str | None = None
    starts_in_reasoning: bool = False  # the generation prompt already opened a think block

    @property
    def has_thinking(self) -> bool:
        return bool(self.think_start and self.think_end)

    @property
    def has_tool_calling(self) -> bool:
        return bool(self.tool_parser and self.tool_start and self.tool_end)

    @classmethod
    def from_payload(cls, data: dict[str, Any] | None) -> Markers | None:
        """Markers as a worker stored them (Snapshot.markers); None when it did not. Strings only: the row
        is ours, but a marker that is not a string would break the stream parser mid-answer."""
        if not isinstance(data, dict):
            return None
        fields: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = data.get(name)
            fields[name] = value if isinstance(value, str) and value else None
        fields["starts_in_reasoning"] = bool(data.get("starts_in_reasoning"))
        return cls(**fields)

    def as_payload(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


NO_MARKERS = Markers()


# --- Markers from a snapshot's files ---------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _read_metadata(path: Path) -> Any:
    """A small JSON file of the snapshot, bounded in size and depth (HUB_METADATA_MAX_BYTES): the files come
    from the Hub, and this runs in the web process. {} when missing, unreadable or over the bounds."""
    try:
        return read_metadata(path)
    except (OSError, ValueError, MetadataError):
        return {}


def _chat_template(model_dir: Path, config: dict[str, Any]) -> str:
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    if isinstance(template, str) and template:
        return template
    jinja = _read_text(model_dir / "chat_template.jinja")
    if jinja:
        return jinja
    data = _read_metadata(model_dir / "chat_template.json")
    return str(data.get("chat_template", "")) if isinstance(data, dict) else ""


def _in_vocab(tokenizer_json: str, token: str) -> bool:
    # A search for the JSON-quoted token, not a parse: tokenizer.json can be tens of megabytes.
    return json.dumps(token) in tokenizer_json


def _starts_in_reasoning(template: str, think_start: str, think_end: str) -> bool:
    """Whether the generation prompt opens a think block the model is expected to close (DeepSeek-R1, Qwen3
    thinking): in each `add_generation_prompt` block, more think starts than ends."""
    for match in re.finditer(r"add_generation_prompt", template):
        block = template[match.end() : match.end() + 600]
        block = block.split("endif", 1)[0]
        if block.count(think_start) > block.count(think_end):
            return True
    return False


def infer_markers(*, template: str, tokenizer_json: str, config: dict[str, Any]) -> Markers:
    think_start = think_end = None
    for start, end in THINK_PAIRS:
        if _in_vocab(tokenizer_json, start) and _in_vocab(tokenizer_json, end):
            think_start, think_end = start, end
            break
    parser = config.get("tool_parser_type")
    if not parser and template:
        for needles, name in _TEMPLATE_TOOL_RULES:
            if all(n in template for n in needles):
                parser = name
                break
    if (
        not parser
        and _in_vocab(tokenizer_json, "<|tool_call_start|>")
        and _in_vocab(tokenizer_json, "<|tool_call_end|>")
    ):
        parser = "pythonic"
    tool_start = tool_end = None
    if parser:
        module = tool_parser_module(str(parser))
        if module is None:
            parser = None
        else:
            tool_start, tool_end = module.tool_call_start, module.tool_call_end
    return Markers(
        think_start=think_start,
        think_end=think_end,
        tool_parser=parser,
        tool_start=tool_start,
        tool_end=tool_end,
        starts_in_reasoning=bool(
            think_start and think_end and _starts_in_reasoning(template, think_start, think_end)
        ),
    )


@functools.lru_cache(maxsize=64)
def _markers_cached(model_dir: str, stamp: float) -> Markers:
    root = Path(model_dir)
    config = _read_metadata(root / "tokenizer_config.json")
    if not isinstance(config, dict):
        config = {}
    return infer_markers(
        template=_chat_template(root, config),
        tokenizer_json=_read_text(root / "tokenizer.json"),
        config=config,
    )


def markers_for_path(model_dir: str | Path) -> Markers:
    """The markers of the model in this directory (cached; snapshots are immutable, the mtime guards local
    models that are edited in place)."""
    root = Path(model_dir)
    try:
        stamp = (root / "tokenizer_config.json").stat().st_mtime
    except OSError:
        return NO_MARKERS
    try:
        return _markers_cached(str(root), stamp)
    except Exception:  # odd files must never break a completion: answer as plain text
        log.exception("could not read the tokenizer markers of %s", root)
        return NO_MARKERS


# --- mlx-lm's tool parsers, without importing mlx ----------------------------------------------------------------

_PARSER_PACKAGE = "models_app.openai._mlx_tool_parsers"
_NAME_RE = re.compile(r"[a-z0-9_]{1,40}")


def tool_parser_module(name: str) -> types.ModuleType | None:
    """mlx_lm.tool_parsers.<name>, loaded as a module of a stand-in package: importing `mlx_lm.tool_parsers`
    itself would run mlx_lm/__init__.py, which imports MLX and transformers into the web process. The parser
    modules only use json/ast/regex (and relative imports among themselves, which the stand-in serves)."""
    if not _NAME_RE.fullmatch(name):
        return None
    package = sys.modules.get(_PARSER_PACKAGE)
    if package is None:
        spec = importlib.util.find_spec("mlx_lm")  # finds the directory without executing the package
        if spec is None or not spec.submodule_search_locations:
            return None
        directory = Path(next(iter(spec.submodule_search_locations))) / "tool_parsers"
        package = types.ModuleType(_PARSER_PACKAGE)
        package.__path__ = [str(directory)]
        sys.modules[_PARSER_PACKAGE] = package
    try:
        return importlib.import_module(f"{_PARSER_PACKAGE}.{name}")
    except Exception:
        log.warning("mlx-lm has no usable tool parser %r", name)
        return None


# --- The stream parser ---------------------------------------------------------------------------------------------


@dataclass
class Piece:
    kind: str  # "content" | "reasoning" | "tool_call"
    text: str = ""
    tool_call: dict[str, Any] | None = None  # {"id", "type": "function", "function": {"name", "arguments"}}


def _format_call(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call.get("arguments", {})
    if not isinstance(arguments, str):  # OpenAI sends arguments as a JSON string
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {
        "id": str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
        "type": "function",
        "function": {"name": str(call.get("name", "")), "arguments": arguments},
    }


class StreamParser:
    """Feed text as it streams; get back pieces. Markers are removed; text that could be the start of a
    marker waits for the next chunk (at most one marker's length), everything else passes at once."""

    def __init__(
        self,
        markers: Markers,
        *,
        tools: list[dict[str, Any]] | None = None,
        parse_tools: bool = True,
        parser: Callable[[str, Any], Any] | None = None,
    ) -> None:
        self.markers = markers
        self.tools = tools
        self.parse_tools = bool(parse_tools and markers.has_tool_calling and tools)
        self._parser = parser
        self.state = "reasoning" if markers.has_thinking and markers.starts_in_reasoning else "normal"
        self._buffer = ""
        self._tool_text = ""
        self.tool_calls: list[dict[str, Any]] = []

    def _transitions(self) -> list[tuple[str, str]]:
        m = self.markers
        if self.state == "normal":
            edges = []
            if m.has_thinking:
                edges.append((m.think_start, "reasoning"))
            if self.parse_tools:
                edges.append((m.tool_start, "tool"))
            return edges  # type: ignore[return-value]
        if self.state == "reasoning":
            return [(m.think_end, "normal")]  # type: ignore[list-item]
        return [(m.tool_end, "normal")]  # type: ignore[list-item]

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        pieces: list[Piece] = []
        while True:
            edges = self._transitions()
            hits = [(self._buffer.find(marker), marker, target) for marker, target in edges if marker]
            hits = [h for h in hits if h[0] >= 0]
            if hits:
                index, marker, target = min(hits)
                self._emit(self._buffer[:index], pieces)
                self._buffer = self._buffer[index + len(marker) :]
                self._switch(target, pieces)
                continue
            hold = max((_partial_suffix(self._buffer, m) for m, _ in edges if m), default=0)
            cut = len(self._buffer) - hold
            self._emit(self._buffer[:cut], pieces)
            self._buffer = self._buffer[cut:]
            return pieces

    def finish(self) -> list[Piece]:
        """End of generation: withheld text was not a marker; an unclosed tool call is parsed as it is."""
        pieces: list[Piece] = []
        self._emit(self._buffer, pieces)
        self._buffer = ""
        if self.state == "tool":
            self._switch("normal", pieces)
        return pieces

    def _emit(self, text: str, pieces: list[Piece]) -> None:
        if not text:
            return
        if self.state == "tool":
            self._tool_text += text
        else:
            kind = "reasoning" if self.state == "reasoning" else "content"
            if pieces and pieces[-1].kind == kind:
                pieces[-1].text += text
            else:
                pieces.append(Piece(kind, text))

    def _switch(self, target: str, pieces: list[Piece]) -> None:
        if self.state == "tool" and target != "tool":
            pieces.extend(self._parse_tool(self._tool_text))
            self._tool_text = ""
        self.state = target

    def _parse_tool(self, text: str) -> list[Piece]:
        parser = self._parser
        if parser is None:
            module = tool_parser_module(self.markers.tool_parser or "")
            parser = getattr(module, "parse_tool_call", None)
        try:
            if parser is None:
                raise ValueError("no parser")
            parsed = parser(text, self.tools)
            calls = parsed if isinstance(parsed, list) else [parsed]
            formatted = [_format_call(c) for c in calls if isinstance(c, dict)]
        except Exception as exc:  # a truncated or malformed call: show it as text rather than lose it
            log.info("tool call not parsed (%s: %s)", type(exc).__name__, exc)
            return [Piece("content", f"{self.markers.tool_start}{text}{self.markers.tool_end}")]
        self.tool_calls.extend(formatted)
        return [Piece("tool_call", tool_call=call) for call in formatted]


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
