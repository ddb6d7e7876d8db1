"""Honest OpenAI parameters (issue 13, item 4): logprobs/top_logprobs, logit_bias and response_format
(constrained decoding) honoured, in streaming and whole answers, chat and legacy completions; the other
answer-changing fields refused by name. Through the official `openai` client against the real ASGI server and a real inference worker running the
tiny model, compared with raw mlx-lm on the same model and prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from models_app.models import Usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inference_worker")]

MODEL = "test/tiny-chat"
PROMPT = "Once upon a time"
CHAT = [{"role": "user", "content": "Tell me a story."}]
# The worker prefills in chunks, raw mlx-lm in one go: float32 sums in another order.
TOLERANCE = 2e-3


@pytest.fixture
def oai(asgi_server, alice_key: str, tiny_snapshot) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=alice_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def raw_mlx(tiny_model_path: Path) -> tuple[Any, Any]:
    import mlx_lm

    return mlx_lm.load(str(tiny_model_path))


def raw_greedy(raw_mlx: tuple[Any, Any], prompt: str, max_tokens: int, top: int) -> list[dict[str, Any]]:
    """What mlx-lm itself gives for the prompt at temperature 0: per token its text, logprob and the top ones."""
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    from models_app.services.engine.prompt import encode_text

    model, tokenizer = raw_mlx
    out = []
    for response in mlx_lm.stream_generate(
        model, tokenizer, encode_text(tokenizer, prompt), max_tokens=max_tokens, sampler=make_sampler(temp=0)
    ):
        vector = response.logprobs
        best = mx.argsort(-vector)[:top].tolist()
        out.append(
            {
                "id": response.token,
                "text": tokenizer.decode([response.token]),
                "logprob": vector[response.token].item(),
                "max": vector.max().item(),
                "top": [vector[i].item() for i in best],
            }
        )
    return out


def entry_bytes(entries: list[Any]) -> bytes:
    return b"".join(bytes(e.bytes) for e in entries)


def test_chat_logprobs_whole_are_the_chosen_tokens_with_their_top_alternatives(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )

    choice = completion.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == completion.usage.completion_tokens == 8  # the tiny model never emits EOS
    assert entry_bytes(entries).decode() == choice.message.content  # token by token, the exact text
    for entry in entries:
        assert entry.token and entry.logprob < 0
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one, so it heads the alternatives.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)
        assert entry.top_logprobs[0].bytes == entry.bytes

    plain = oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None  # not asked, not sent


def test_chat_logprobs_streamed_ride_with_their_tokens_and_match_the_whole_answer(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12, temperature=0, logprobs=True, top_logprobs=2
    )
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=12,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    streamed: list[Any] = []
    text = ""
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        if choice.delta.content:
            # A chunk carries the entries of its own tokens (the tiny model's text is ASCII: whole tokens).
            assert entry_bytes(choice.logprobs.content).decode() == choice.delta.content
        if choice.logprobs is not None:
            streamed.extend(choice.logprobs.content)
    assert len(streamed) == 12 == chunks[-1].usage.completion_tokens
    assert entry_bytes(streamed).decode() == text == whole.choices[0].message.content
    expected = whole.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in expected]
    for got, want in zip(streamed, expected, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=TOLERANCE)
        assert [t.token for t in got.top_logprobs] == [t.token for t in want.top_logprobs]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_logprobs_match_raw_mlx_lm(
    oai: openai.OpenAI, raw_mlx: tuple[Any, Any], stream: bool
) -> None:
    """The legacy shape (tokens, token_logprobs, top_logprobs as {token: logprob}, text_offset), with the very
    numbers mlx-lm computes for the same prompt."""
    expected = raw_greedy(raw_mlx, PROMPT, 10, 3)

    kwargs = {"model": MODEL, "prompt": PROMPT, "max_tokens": 10, "temperature": 0, "logprobs": 2}
    if stream:
        tokens: list[str] = []
        token_logprobs: list[float] = []
        top: list[dict[str, float]] = []
        offsets: list[int] = []
        text = ""
        for chunk in oai.completions.create(**kwargs, stream=True):
            choice = chunk.choices[0]
            text += choice.text
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                token_logprobs += choice.logprobs.token_logprobs
                top += choice.logprobs.top_logprobs
                offsets += choice.logprobs.text_offset
    else:
        choice = oai.completions.create(**kwargs).choices[0]
        text = choice.text
        tokens = choice.logprobs.tokens
        token_logprobs = choice.logprobs.token_logprobs
        top = choice.logprobs.top_logprobs
        offsets = choice.logprobs.text_offset

    assert text == "".join(e["text"] for e in expected)
    assert tokens == [e["text"] for e in expected]
    assert token_logprobs == pytest.approx([e["logprob"] for e in expected], abs=TOLERANCE)
    assert token_logprobs == pytest.approx([e["max"] for e in expected], abs=TOLERANCE)  # greedy: the max
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    for alternatives, want, token in zip(top, expected, tokens, strict=True):
        assert len(alternatives) == 2 and token in alternatives
        assert sorted(alternatives.values(), reverse=True) == pytest.approx(want["top"][:2], abs=TOLERANCE)


def test_completion_logprobs_zero_gives_the_chosen_tokens_only(oai: openai.OpenAI) -> None:
    choice = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=0
    ).choices[0]

    assert len(choice.logprobs.tokens) == 5 and "".join(choice.logprobs.tokens) == choice.text
    assert [list(t) for t in choice.logprobs.top_logprobs] == [[t] for t in choice.logprobs.tokens]


def _stop_inside_a_token(tokens: list[str]) -> tuple[str, int]:
    """A stop string that starts in the middle of a token and occurs nowhere earlier: (stop, tokens kept)."""
    text = "".join(tokens)
    offset = 0
    for k, token in enumerate(tokens[:-2]):
        if k >= 2 and len(token) >= 2:
            stop = token[1:] + tokens[k + 1]
            if text.find(stop) == offset + 1:
                return stop, k + 1
        offset += len(token)
    raise AssertionError(f"no usable stop string in {tokens!r}")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_stop_string_drops_the_entries_of_the_tokens_it_cut(oai: openai.OpenAI, stream: bool) -> None:
    """Tokens wholly inside the cut text lose their entries; the token the cut starts in keeps its own."""
    full = oai.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, temperature=0, logprobs=True
    )
    tokens = [e.token for e in full.choices[0].logprobs.content]
    stop, kept = _stop_inside_a_token(tokens)

    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": CHAT,
        "max_tokens": 16,
        "temperature": 0,
        "logprobs": True,
        "stop": [stop],
    }
    if stream:
        entries: list[Any] = []
        text = ""
        finish = None
        for chunk in oai.chat.completions.create(**kwargs, stream=True):
            choice = chunk.choices[0]
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            if choice.logprobs is not None:
                entries += choice.logprobs.content
    else:
        choice = oai.chat.completions.create(**kwargs).choices[0]
        text, entries, finish = choice.message.content, choice.logprobs.content, choice.finish_reason

    assert finish == "stop"
    assert text == "".join(tokens)[: "".join(tokens).find(stop)]
    assert [e.token for e in entries] == tokens[:kept]


def test_logit_bias_steers_the_tokens(oai: openai.OpenAI, raw_mlx: tuple[Any, Any]) -> None:
    _, tokenizer = raw_mlx
    [z] = tokenizer.encode("Z", add_special_tokens=False)

    steered = oai.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logit_bias={str(z): 100}, logprobs=True
    )
    choice = steered.choices[0]
    assert choice.message.content == "ZZZZZ"
    assert all(e.token == "Z" and e.logprob > -0.01 for e in choice.logprobs.content)

    # A ban: the greedy first token never comes when it is biased by -100.
    first = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=0)
    [first_id] = tokenizer.encode(first.choices[0].text, add_special_tokens=False)
    banned = oai.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, logit_bias={str(first_id): -100}
    )
    assert banned.choices[0].text != first.choices[0].text


def test_bad_logit_bias_is_a_400_naming_it(oai: openai.OpenAI) -> None:
    for bias in ({"abc": 1}, {"5": 101}, {"5": "x"}):
        with pytest.raises(openai.BadRequestError) as bad:
            oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, logit_bias=bias)  # type: ignore[arg-type]
        assert bad.value.param == "logit_bias", bias
    # A token id past the vocabulary: only the worker knows the vocabulary, still a 400 before any answer.
    with pytest.raises(openai.BadRequestError) as past:
        oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, logit_bias={"99999999": 5})
    assert "99999999" in past.value.message and "vocabulary" in past.value.message


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog"]},
    },
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}


def test_response_format_json_object_gives_a_json_object(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=300, temperature=0, response_format={"type": "json_object"}
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content  # the JSON ended and so did the answer
    assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_response_format_json_schema_is_followed(oai: openai.OpenAI, stream: bool) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": CHAT,
        "max_tokens": 100,
        "temperature": 0.9,
        "seed": 7,
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        "logprobs": True,
        "top_logprobs": 5,
    }
    if stream:
        text, entries, finish = "", [], None
        for chunk in oai.chat.completions.create(**kwargs, stream=True):
            choice = chunk.choices[0]
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            if choice.logprobs is not None:
                entries += choice.logprobs.content
    else:
        choice = oai.chat.completions.create(**kwargs).choices[0]
        text, entries, finish = choice.message.content, choice.logprobs.content, choice.finish_reason

    assert finish == "stop", text
    person = json.loads(text)
    assert set(person) == {"name", "age", "pet"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert isinstance(person["age"], int) and 0 <= person["age"] <= 120
    assert person["pet"] in ("cat", "dog")
    # Masked alternatives have no -Infinity in JSON: OpenAI's -9999 stands for "cannot come".
    assert entry_bytes(entries).decode() == text
    assert all(t.logprob >= -9999.0 for e in entries for t in e.top_logprobs)


def test_response_format_works_on_the_legacy_endpoint_too(oai: openai.OpenAI) -> None:
    """Not in OpenAI's legacy API, but accepted there as vLLM does: a client that sends it gets what it asked."""
    choice = oai.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=100,
        temperature=0,
        extra_body={
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
        },
    ).choices[0]

    assert choice.finish_reason == "stop", choice.text
    assert set(json.loads(choice.text)) == {"name", "age", "pet"}


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "regex", "regex": "a+"},
    ],
    ids=["bad-schema", "no-schema", "unknown-type"],
)
def test_an_unusable_response_format_is_a_400_naming_it(
    oai: openai.OpenAI, response_format: dict[str, Any]
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=4,
            response_format=response_format,  # type: ignore[arg-type]
        )
    assert refused.value.param == "response_format"
    assert Usage.objects.count() == 0


REFUSED: list[tuple[str, Any]] = [
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("web_search_options", {}),
    ("functions", [{"name": "f", "parameters": {}}]),
    ("function_call", "auto"),
    ("reasoning_effort", "high"),
    ("verbosity", "low"),
    ("tool_choice", "required"),
    ("tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("n", 2),
    ("top_logprobs", 3),  # without logprobs: true
    ("top_logprobs", 21),
    ("logprobs", "yes"),
]


@pytest.mark.parametrize(("field", "value"), REFUSED, ids=[f"{f}={v!r}" for f, v in REFUSED])
def test_chat_fields_that_would_change_the_answer_are_refused_by_name(
    oai: openai.OpenAI, field: str, value: Any
) -> None:
    extra = {field: value}
    if field == "top_logprobs" and value == 21:
        extra["logprobs"] = True
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, extra_body=extra)
    assert refused.value.param == field


@pytest.mark.parametrize(
    ("field", "value"), [("best_of", 2), ("logprobs", 6), ("echo", True), ("suffix", "x")]
)
def test_completion_fields_that_would_change_the_answer_are_refused_by_name(
    oai: openai.OpenAI, field: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, extra_body={field: value})
    assert refused.value.param == field


def test_harmless_fields_are_accepted_and_change_nothing(oai: openai.OpenAI) -> None:
    plain = oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0)
    decorated = oai.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=6,
        temperature=0,
        user="someone",
        store=False,
        metadata={"k": "v"},
        service_tier="auto",
        parallel_tool_calls=False,
        safety_identifier="abc",
        prompt_cache_key="k",
        response_format={"type": "text"},
        modalities=["text"],
        tool_choice="auto",
        n=1,
        extra_body={"prediction": {"type": "content", "content": "x"}},
    )
    assert decorated.choices[0].message.content == plain.choices[0].message.content
