"""Reasoning and tool calls: the parser on its own, then through the view with a stand-in worker that sends
the chat.* messages a reasoning, tool-calling model would (the tiny model emits neither)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import AsyncClient

from models_app.openai.parsing import Markers, StreamParser, markers_for_path
from models_app.services import inference

QWEN_LIKE_TEMPLATE = (
    '{%- if tools %}<tools>{{ tools | tojson }}</tools> Call a tool with <tool_call>{"name": '
    '<function-name>, "arguments": <args-json-object>}</tool_call>{%- endif %}'
    "{%- for message in messages %}{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "<tool_call>{{ tool_call.name }}</tool_call>{%- endfor %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture
def thinking_model_dir(tmp_path: Path) -> Path:
    """The tokenizer files of a Qwen3-like model: think tokens in the vocab, a json_tools template."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": QWEN_LIKE_TEMPLATE}))
    added = [
        {"id": 1, "content": "<think>"},
        {"id": 2, "content": "</think>"},
        {"id": 3, "content": "<tool_call>"},
    ]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": added, "model": {"vocab": {}}}))
    return tmp_path


def test_markers_are_inferred_from_the_tokenizer_files(
    thinking_model_dir: Path, tiny_model_path: Path
) -> None:
    markers = markers_for_path(thinking_model_dir)
    assert (markers.think_start, markers.think_end) == ("<think>", "</think>")
    assert (markers.tool_parser, markers.tool_start, markers.tool_end) == (
        "json_tools",
        "<tool_call>",
        "</tool_call>",
    )
    assert not markers.starts_in_reasoning  # the template opens <think> only to close it at once

    plain = markers_for_path(tiny_model_path)
    assert not plain.has_thinking and not plain.has_tool_calling


def test_a_template_that_opens_the_think_block_starts_in_reasoning(tmp_path: Path) -> None:
    template = "{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (tmp_path / "tokenizer.json").write_text(
        '{"added_tokens": [{"content": "<think>"}, {"content": "</think>"}]}'
    )
    markers = markers_for_path(tmp_path)
    assert markers.starts_in_reasoning
    pieces = StreamParser(markers).feed("Let me see.</think>Paris.")
    assert [(p.kind, p.text) for p in pieces] == [("reasoning", "Let me see."), ("content", "Paris.")]


def test_markers_split_across_chunks_are_found_and_removed() -> None:
    markers = Markers("<think>", "</think>", "json_tools", "<tool_call>", "</tool_call>")
    parser = StreamParser(markers, tools=TOOLS)
    text = (
        'A<think>hmm</think>B<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    pieces = []
    for ch in text:
        pieces += parser.feed(ch)
    pieces += parser.finish()
    kinds = [(p.kind, p.text) for p in pieces if p.kind != "tool_call"]
    assert "".join(t for k, t in kinds if k == "content") == "AB"
    assert "".join(t for k, t in kinds if k == "reasoning") == "hmm"
    [call] = parser.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_tool_markers_are_plain_text_when_no_tools_were_sent() -> None:
    markers = Markers(None, None, "json_tools", "<tool_call>", "</tool_call>")
    parser = StreamParser(markers, tools=None)
    pieces = parser.feed("<tool_call>x</tool_call>") + parser.finish()
    assert "".join(p.text for p in pieces) == "<tool_call>x</tool_call>" and not parser.tool_calls


def test_a_malformed_tool_call_is_kept_as_text() -> None:
    markers = Markers(None, None, "json_tools", "<tool_call>", "</tool_call>")
    parser = StreamParser(markers, tools=TOOLS)
    pieces = parser.feed("<tool_call>{not json</tool_call>") + parser.finish()
    assert "".join(p.text for p in pieces) == "<tool_call>{not json</tool_call>" and not parser.tool_calls


# --- Through the view, with a stand-in worker --------------------------------------------------------------------


def fake_worker(monkeypatch: pytest.MonkeyPatch, texts: list[str], finish_reason: str = "stop") -> list[dict]:
    """Replace start_generation by a function that sends the replies a model would, at once."""
    seen: list[dict[str, Any]] = []

    def start(request: dict[str, Any], **kwargs: Any) -> None:
        seen.append(request)
        layer = get_channel_layer()
        base = {"request_id": request["request_id"]}
        messages = [
            {
                "type": "chat.started",
                "seq": 0,
                "prompt_tokens": 7,
                "cached_tokens": 0,
                "max_tokens": 50,
                "model": "test/thinker",
                "worker": "fake",
            }
        ]
        for i, text in enumerate(texts, start=1):
            messages.append({"type": "chat.delta", "seq": i, "text": text, "tokens": i})
        messages.append(
            {
                "type": "chat.done",
                "seq": len(texts) + 1,
                "text": "".join(texts),
                "finish_reason": finish_reason,
                "usage": {"prompt_tokens": 7, "completion_tokens": 9},
            }
        )
        for message in messages:
            async_to_sync(layer.send)(request["reply_channel"], {**base, **message})

    monkeypatch.setattr(inference, "start_generation", start)
    return seen


def post(key: str, body: dict[str, Any]) -> Any:
    """POST in one event loop, reading a streamed body there too (the channel layer is bound to its loop)."""

    async def run() -> Any:
        response = await AsyncClient().post(
            "/v1/chat/completions",
            body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {key}"},
        )
        if response.streaming:
            response.sse_text = b"".join([chunk async for chunk in response.streaming_content]).decode()
        return response

    return asyncio.run(run())


@pytest.fixture
def thinker(make_snapshot, thinking_model_dir: Path):  # type: ignore[no-untyped-def]
    # Its markers as the worker that has the files writes them into the row (the view reads only the row).
    from models_app.services.model_markers import read_markers

    return make_snapshot(
        "test/thinker", path=str(thinking_model_dir), markers=read_markers(thinking_model_dir)
    )


@pytest.mark.django_db(transaction=True)
def test_tool_calls_and_reasoning_are_returned_whole(monkeypatch, alice_key: str, thinker) -> None:  # type: ignore[no-untyped-def]
    seen = fake_worker(
        monkeypatch,
        [
            "<think>The user wants",
            " the weather.</think>",
            '<tool_call>{"name": "get_weather", ',
            '"arguments": {"city": "Paris"}}</tool_call>',
        ],
    )
    body = {"model": "test/thinker", "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS}
    response = post(alice_key, body)

    assert response.status_code == 200, response.content
    assert seen[0]["options"]["tools"] == TOOLS and seen[0]["api_key_id"] and seen[0]["source"] == "api"
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    assert message["reasoning_content"] == message["reasoning"] == "The user wants the weather."
    [call] = message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert response.json()["usage"]["total_tokens"] == 16


@pytest.mark.django_db(transaction=True)
def test_tool_calls_are_streamed_with_an_index(monkeypatch, alice_key: str, thinker) -> None:  # type: ignore[no-untyped-def]
    fake_worker(
        monkeypatch,
        ["<think>hm</think>Sure. ", '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'],
    )
    body = {
        "model": "test/thinker",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": TOOLS,
        "stream": True,
    }
    response = post(alice_key, body)
    assert response.status_code == 200
    text = response.sse_text
    payloads = [json.loads(f[6:]) for f in text.split("\n\n") if f.startswith("data: {")]
    deltas = [p["choices"][0]["delta"] for p in payloads]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert {"reasoning_content": "hm", "reasoning": "hm"} in deltas
    assert "Sure. " in [d.get("content") for d in deltas]
    [calls] = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert payloads[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert text.endswith("data: [DONE]\n\n")


@pytest.mark.django_db(transaction=True)
def test_without_tools_the_same_text_is_content(monkeypatch, alice_key: str, thinker) -> None:  # type: ignore[no-untyped-def]
    fake_worker(monkeypatch, ["<tool_call>{}</tool_call>"])
    response = post(alice_key, {"model": "test/thinker", "messages": [{"role": "user", "content": "hi"}]})
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "<tool_call>{}</tool_call>" and choice["finish_reason"] == "stop"


@pytest.mark.django_db(transaction=True)
def test_keep_alive_comments_flow_while_the_prompt_is_processed(monkeypatch, alice_key: str, thinker) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    from models_app.openai import views

    monkeypatch.setattr(views, "KEEPALIVE_SECONDS", 0.2)

    def start(request: dict[str, Any], **kwargs: Any) -> None:
        def work() -> None:
            layer = get_channel_layer()
            send = async_to_sync(layer.send)
            base = {"request_id": request["request_id"], "worker": "fake"}
            send(request["reply_channel"], {**base, "type": "chat.started", "seq": 0, "prompt_tokens": 9000})
            for seq in range(1, 9):  # a long prompt: progress every 0.1 s for 0.8 s
                time.sleep(0.1)
                send(
                    request["reply_channel"],
                    {**base, "type": "chat.progress", "seq": seq, "processed": seq * 1000},
                )
            send(
                request["reply_channel"], {**base, "type": "chat.delta", "seq": 9, "text": "ok", "tokens": 1}
            )
            send(
                request["reply_channel"],
                {**base, "type": "chat.done", "seq": 10, "text": "ok", "finish_reason": "stop", "usage": {}},
            )

        threading.Thread(target=work, daemon=True).start()

    monkeypatch.setattr(inference, "start_generation", start)
    response = post(
        alice_key, {"model": "test/thinker", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    comments = response.sse_text.count(": keep-alive\n\n")
    assert 2 <= comments <= 5  # about one per 0.2 s of the 0.8 s prompt, not one per progress message
    assert response.sse_text.endswith("data: [DONE]\n\n")
