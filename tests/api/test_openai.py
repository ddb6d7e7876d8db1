"""The OpenAI-compatible API through the official `openai` client, against the real ASGI server and a real
inference worker running the tiny model."""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest

from devkit.processes import wait_for
from models_app.models import ApiKey, Usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inference_worker")]

MODEL = "test/tiny-chat"


@pytest.fixture
def oai(asgi_server, alice_key: str, tiny_snapshot) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    # No retries: a retried 5xx would hide the first failure (and double the usage rows).
    return openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=alice_key, max_retries=0, timeout=60)


def usage_rows(expected: int, timeout: float = 10.0) -> list[Usage]:
    wait_for(lambda: Usage.objects.count() >= expected, timeout, f"expected {expected} usage rows")
    return list(Usage.objects.select_related("api_key").order_by("created_at"))


def test_it_lists_ready_models_the_key_may_see(oai: openai.OpenAI, make_snapshot, bob) -> None:  # type: ignore[no-untyped-def]
    make_snapshot("test/downloading", status="downloading")
    make_snapshot("test/bobs-private", private=True, owner=bob)

    models = oai.models.list().data

    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model" and models[0].owned_by == "test" and models[0].created > 0
    assert oai.models.retrieve(MODEL).id == MODEL  # the id has a slash: a path converter
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("test/bobs-private")


def test_a_chat_completion_has_the_message_finish_reason_and_usage(
    oai: openai.OpenAI, alice_key: str
) -> None:
    completion = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
    )

    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"  # the tiny model never emits EOS
    assert completion.usage.completion_tokens == 8
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 8

    [row] = usage_rows(1)
    assert row.source == "api" and row.api_key is not None and row.api_key.key_hash == ApiKey.hash(alice_key)
    assert row.user.username == "alice"
    assert row.completion_tokens == 8 and row.snapshot.repository.repo_id == MODEL


def test_a_streamed_chat_completion_includes_usage_and_ends_with_done(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_the_raw_stream_is_openai_sse(asgi_server, alice_key: str, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    """Byte level, as a curl user sees it: `data: {...}` frames, then `data: [DONE]`."""
    with httpx.stream(
        "POST",
        f"{asgi_server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice_key}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream": True,
        },
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    frames = [f for f in body.split("\n\n") if f]
    data = [f.removeprefix("data: ") for f in frames if f.startswith("data: ")]
    assert data[-1] == "[DONE]"
    first = json.loads(data[0])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first  # only with stream_options.include_usage
    last = json.loads(data[-2])
    assert last["choices"][0]["finish_reason"] == "length" and last["choices"][0]["delta"] == {}


def test_an_ide_agent_request_gets_a_complete_streamed_answer(
    asgi_server, alice_key: str, tiny_snapshot
) -> None:  # type: ignore[no-untyped-def]
    """Shaped like Roo Code / Cline: a long system prompt, tools always present, stream with usage, no
    max_tokens (the worker fills the context window), content as a list of text parts."""
    body = {
        "model": MODEL,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "You are Roo, a skilled software engineer. Use tools when needed."},
            {"role": "user", "content": [{"type": "text", "text": "<task>\nhi\n</task>"}]},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "read_file",
                    "description": "Read a file",
                    "parameters": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}},
                        "required": ["path"],
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
    }
    with httpx.stream(
        "POST",
        f"{asgi_server.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice_key}", "User-Agent": "RooCode/3.0"},
        json=body,
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        frames = [f for f in "".join(response.iter_text()).split("\n\n") if f.startswith("data: ")]
    payloads = [json.loads(f[6:]) for f in frames[:-1]]
    assert frames[-1] == "data: [DONE]"
    usage = payloads[-1]["usage"]
    finish = [
        p["choices"][0]["finish_reason"]
        for p in payloads
        if p["choices"] and p["choices"][0]["finish_reason"]
    ]
    assert finish == ["length"]  # ran to the end of the window: the tiny model never stops by itself
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 512  # the tiny model's context window


def test_a_text_completion(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    assert completion.object == "text_completion" and completion.choices[0].text
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 6

    chunks = list(oai.completions.create(model=MODEL, prompt="The sky", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_errors_are_openai_shaped(oai: openai.OpenAI, asgi_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.AuthenticationError) as bad_key:
        openai.OpenAI(
            base_url=f"{asgi_server.url}/v1", api_key="mlxcr_nope_nope", max_retries=0
        ).models.list()
    assert bad_key.value.status_code == 401 and bad_key.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as unknown:
        oai.chat.completions.create(model="nobody/nothing", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.code == "model_not_found"
    assert set(unknown.value.body) >= {"message", "type", "code", "param"}

    with pytest.raises(openai.BadRequestError) as images:
        oai.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                }
            ],
        )
    assert "text-only" in images.value.message and images.value.code == "image_not_supported"

    with pytest.raises(openai.BadRequestError) as n:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2)
    assert n.value.param == "n"

    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError) as temperature:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=-1)
    assert temperature.value.param == "temperature"
    assert Usage.objects.count() == 0  # nothing was generated for any of these


def test_a_revoked_key_fails_at_once(oai: openai.OpenAI, alice_key: str) -> None:
    assert oai.models.list().data
    ApiKey.objects.get(key_hash=ApiKey.hash(alice_key)).revoke()
    with pytest.raises(openai.AuthenticationError):
        oai.models.list()


def test_no_inference_worker_is_a_503(alice_key: str, tiny_snapshot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Checked in-process (the session's worker stays up): the view asks for live workers first."""
    import asyncio

    from django.test import AsyncClient

    from models_app.services import workers

    monkeypatch.setattr(workers, "live_workers", lambda: [])
    client = AsyncClient()
    response = asyncio.run(
        client.post(
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            content_type="application/json",
            headers={"Authorization": f"Bearer {alice_key}"},
        )
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_worker"


def test_closing_the_stream_stops_the_generation(asgi_server, alice_key: str, long_snapshot) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "test/tiny-long", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST",
            f"{asgi_server.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {alice_key}"},
            json=body,
        ) as response,
    ):
        for chunk in response.iter_text():
            if '"content":"' in chunk.replace('"content":""', ""):
                break  # got an answer going: hang up
    [row] = usage_rows(1, timeout=30)
    assert row.finish_reason == "cancelled"
    assert row.completion_tokens < 4000  # far from the ~8k the window allows


def test_unknown_routes_and_methods_answer_in_openai_shape(asgi_server, alice_key: str) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {alice_key}"}
    missing = httpx.get(f"{asgi_server.url}/v1/embeddings", headers=headers)
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "code", "param"}
    wrong = httpx.get(f"{asgi_server.url}/v1/chat/completions", headers=headers)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    not_json = httpx.post(f"{asgi_server.url}/v1/chat/completions", headers=headers, content=b"{nope")
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]
    # The OpenAI API takes API keys only: a browser session is not enough, and no CSRF token is needed.
    assert httpx.get(f"{asgi_server.url}/v1/models").status_code == 401
    # The key is checked before the body is read: no key and a broken body is a 401, not a 400.
    unkeyed = httpx.post(f"{asgi_server.url}/v1/chat/completions", content=b"{nope")
    assert unkeyed.status_code == 401 and unkeyed.json()["error"]["code"] == "invalid_api_key"


def test_a_key_over_its_in_flight_limit_gets_a_429_and_its_slot_back_after(  # type: ignore[no-untyped-def]
    alice_key: str, tiny_snapshot, settings
) -> None:
    """Checked in-process with the real worker: a limit of one, taken by a request still in flight."""
    import asyncio

    from django.test import AsyncClient

    from models_app.services import inflight
    from models_app.services import redis as app_redis

    settings.API_MAX_IN_FLIGHT_PER_KEY = 1
    key = ApiKey.objects.get(key_hash=ApiKey.hash(alice_key))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def post() -> object:
        return asyncio.run(
            AsyncClient().post(
                "/v1/chat/completions",
                body,
                content_type="application/json",
                headers={"Authorization": f"Bearer {alice_key}"},
            )
        )

    held = inflight.acquire("a-request-in-flight", [inflight.Scope("apikey", key.id, 1)])
    refused = post()
    assert refused.status_code == 429
    assert refused["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"

    inflight.release(held)
    answered = post()
    assert answered.status_code == 200, answered.content
    assert answered.json()["usage"]["completion_tokens"] == 4
    assert app_redis.client().zcard(app_redis.key("inflight", "apikey", key.id)) == 0

    async def stream() -> bytes:
        response = await AsyncClient().post(
            "/v1/chat/completions",
            {**body, "stream": True},
            content_type="application/json",
            headers={"Authorization": f"Bearer {alice_key}"},
        )
        return b"".join([chunk async for chunk in response.streaming_content])

    assert asyncio.run(stream()).endswith(b"data: [DONE]\n\n")
    assert (
        app_redis.client().zcard(app_redis.key("inflight", "apikey", key.id)) == 0
    )  # a stream gives it back
