"""Requests in flight through the real `openai` SDK against the served product and a real inference worker:
slots come back whatever the client does (issue 13 item 1)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx2 as httpx
import openai
import pytest
from django.conf import settings

from devkit.processes import wait_for
from models_app.models import ApiKey, UserLimits
from models_app.services import inflight
from models_app.services import redis as app_redis
from tests.factories import make_snapshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inference_worker")]

MODEL = "test/tiny-chat"
HI = [{"role": "user", "content": "hi"}]


def key_in_flight(raw_key: str) -> int:
    key = ApiKey.objects.get(key_hash=ApiKey.hash(raw_key))
    return app_redis.client().zcard(app_redis.key("inflight", "apikey", key.id))


@contextmanager
def worker_busy(url: str, raw_key: str, **request: Any) -> Iterator[None]:
    """Another user's long generations fill every slot of the inference worker (INFERENCE_SLOTS, batched), so
    requests sent meanwhile queue; leaving the block hangs up on them, which cancels them (if still running)."""
    slots = settings.INFERENCE_SLOTS
    started, stop = threading.Semaphore(0), threading.Event()

    def hold() -> None:
        body = {"model": "test/tiny-long", "messages": HI, "stream": True, **request}
        headers = {"Authorization": f"Bearer {raw_key}"}
        streaming = False
        with (
            httpx.Client(timeout=120) as http,
            http.stream("POST", f"{url}/v1/chat/completions", headers=headers, json=body) as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_text():
                if not streaming and '"content":"' in chunk.replace('"content":""', ""):
                    streaming = True
                    started.release()
                if stop.is_set():
                    return

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(slots)]
    for thread in threads:
        thread.start()
    for _ in range(slots):
        assert started.acquire(timeout=120), "the long generations never all started"
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)


def test_streams_closed_at_every_stage_give_their_slots_back(  # type: ignore[no-untyped-def]
    asgi_server, alice, alice_key: str, bob_key: str, tiny_snapshot, long_snapshot
) -> None:
    limit = settings.API_MAX_IN_FLIGHT_PER_KEY
    # Staff raised alice's own limit to her key's, so the key's limit is the one this test fills.
    UserLimits.objects.create(user=alice, max_in_flight=limit)
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=alice_key, max_retries=0, timeout=120)

    def read_to_done(_: int) -> int:
        # The SDK closes the connection as soon as it reads [DONE], before the server's last body message.
        chunks = list(client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, stream=True))
        return len(chunks)

    def hang_up_mid_stream(_: int) -> None:
        stream = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=200, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()

    with ThreadPoolExecutor(4) as pool:
        assert all(n >= 2 for n in pool.map(read_to_done, range(100)))
        list(pool.map(hang_up_mid_stream, range(10)))

    # Before the first byte: the status line waits for the worker, which is busy with someone else's answer.
    impatient = client.with_options(timeout=2.0)
    with worker_busy(asgi_server.url, bob_key), ThreadPoolExecutor(limit) as pool:

        def give_up_before_first_byte(stream: bool) -> None:
            with pytest.raises(openai.APITimeoutError):
                impatient.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, stream=stream)

        list(pool.map(give_up_before_first_byte, [True, False] * (limit // 2)))

    wait_for(lambda: key_in_flight(alice_key) == 0, 60, "in-flight slots were never given back")

    # The full limit runs at once: queued behind another user's answers, so all are in flight together.
    with ThreadPoolExecutor(limit) as pool:
        with worker_busy(asgi_server.url, bob_key):
            answers = [pool.submit(read_to_done, i) for i in range(limit)]
            wait_for(lambda: key_in_flight(alice_key) == limit, 60, "the full limit never was in flight")
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
        # Leaving worker_busy hangs up on the other user's answers: these run now.
        assert all(answer.result(timeout=120) >= 2 for answer in answers)
    wait_for(lambda: key_in_flight(alice_key) == 0, 60, "in-flight slots were never given back")
    assert inflight.count("user", alice.id) == 0
    # Every slot was given back by its request: none had to expire (which would take LEASE_SECONDS).
    assert int(app_redis.client().get(inflight.expired_key()) or 0) == 0


def test_one_users_queue_does_not_run_before_another_users_request(  # type: ignore[no-untyped-def]
    asgi_server, alice_key: str, bob_key: str, long_snapshot
) -> None:
    """Alice's agent fires 10 requests at once and retries each 429 (the SDK honours Retry-After); Bob asks once
    while hers are queued. With one worker answering in arrival order, Bob waits for at most the requests Alice
    may have in flight, not for all ten."""
    limit = settings.INFERENCE_MAX_IN_FLIGHT_PER_USER
    alice = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=alice_key, max_retries=100, timeout=300)
    bob = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=bob_key, max_retries=0, timeout=300)
    finished: list[tuple[float, str]] = []
    lock = threading.Lock()

    def ask(client: openai.OpenAI, who: str) -> None:
        answer = client.chat.completions.create(model="test/tiny-long", messages=HI, max_tokens=300)
        assert answer.usage.completion_tokens == 300
        with lock:
            finished.append((time.monotonic(), who))

    with ThreadPoolExecutor(11) as pool:
        alices = [pool.submit(ask, alice, "alice") for _ in range(10)]
        wait_for(lambda: key_in_flight(alice_key) >= limit, 60, "alice's requests never queued")
        bob_sent = time.monotonic()
        pool.submit(ask, bob, "bob").result(timeout=300)
        for answer in alices:
            answer.result(timeout=600)

    [bob_done] = [t for t, who in finished if who == "bob"]
    ahead = [t for t, who in finished if who == "alice" and bob_sent < t < bob_done]
    assert len(ahead) <= limit, f"{len(ahead)} of alice's answers ran while bob's one waited"
    assert len(finished) == 11


def test_ten_thousand_tiny_messages_are_a_clear_400(asgi_server, alice_key: str, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    """The request that held the single worker for 11 minutes: refused before it reaches the worker."""
    from models_app.models import Usage

    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=alice_key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "a"}] * 10_000
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert refused.value.param == "messages" and refused.value.code == "request_too_large"
    assert f"at most {settings.INFERENCE_MAX_MESSAGES:,} messages" in refused.value.message

    chars = settings.INFERENCE_MAX_PROMPT_CHARS
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model=MODEL, prompt="a" * (chars + 1), max_tokens=2)
    assert long_prompt.value.param == "prompt" and f"{chars:,} characters" in long_prompt.value.message
    with pytest.raises(openai.BadRequestError) as long_parts:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "text", "text": "a" * (chars // 2 + 1)}] * 2}],
            max_tokens=2,
        )
    assert long_parts.value.param == "messages"

    # At the limits, the request runs.
    at_limit = [{"role": "user", "content": "a"}] * settings.INFERENCE_MAX_MESSAGES
    assert client.chat.completions.create(model=MODEL, messages=at_limit, max_tokens=2).choices
    assert Usage.objects.count() == 1


def test_a_renewed_lease_holds_its_slot_and_an_abandoned_one_expires(monkeypatch, alice) -> None:  # type: ignore[no-untyped-def]
    """The lease itself, on the real Redis, with a three-second lease: renewals keep it past its first expiry;
    without them it goes, is counted as expired, and the slot is free again."""
    monkeypatch.setattr(inflight, "LEASE_SECONDS", 3.0)
    monkeypatch.setattr(inflight, "RENEW_EVERY", 0.1)
    scopes = [inflight.Scope("user", alice.id, 1)]
    running = inflight.acquire("running", scopes)
    deadline = time.monotonic() + 2 * inflight.LEASE_SECONDS
    while time.monotonic() < deadline:
        if running.renewal_due():
            inflight.renew(running)
        with pytest.raises(inflight.LimitReached) as full:
            inflight.acquire("another", scopes)
        assert full.value.scope == scopes[0]
        time.sleep(0.05)

    # The request stops renewing (its process died): the slot comes back once the lease runs out.
    wait_for(lambda: inflight.count("user", alice.id) == 0, 30, "the lease never expired")
    after = inflight.acquire("after", scopes)
    assert int(app_redis.client().get(inflight.expired_key()) or 0) == 1
    inflight.renew(running)  # a late renewal does not bring a lease back
    inflight.release(after)
    assert inflight.count("user", alice.id) == 0


def test_a_queued_stream_gets_bytes_before_the_clients_read_timeout(  # type: ignore[no-untyped-def]
    asgi_server, alice_key: str, bob_key: str, tiny_snapshot, slow_model_path
) -> None:
    """Issue 13 item 3: a streaming request queued behind a long answer got no byte until the worker took
    it, so an SDK client with a 30 s timeout failed. Now its response starts within a keep-alive period
    (role chunk, then keep-alives), so a client whose read timeout is shorter than the wait is served."""
    make_snapshot("test/tiny-slow", path=slow_model_path)
    timeout = 12.0
    client = openai.OpenAI(
        base_url=f"{asgi_server.url}/v1", api_key=alice_key, max_retries=0, timeout=timeout
    )
    # Leaving the block hangs up on bob's answer first (long enough to outlast the test), then alice's runs.
    with (
        ThreadPoolExecutor(1) as pool,
        worker_busy(asgi_server.url, bob_key, model="test/tiny-slow", max_tokens=6000),
    ):
        answer = pool.submit(
            lambda: list(client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, stream=True))
        )
        time.sleep(2 * timeout)  # queued for twice the client's read timeout...
        assert not answer.done()  # ...and still waiting, not timed out
    chunks = answer.result(timeout=300)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_queued_stream_tells_how_many_requests_are_ahead(  # type: ignore[no-untyped-def]
    asgi_server, alice_key: str, bob_key: str, tiny_snapshot, slow_model_path
) -> None:
    """While it waits, a queued stream's keep-alives say its place: `: queued, N ahead` (SSE comments, which
    clients ignore), the answer being written counted."""
    make_snapshot("test/tiny-slow", path=slow_model_path)
    body = {"model": MODEL, "messages": HI, "max_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {alice_key}"}
    places: dict[int, list[str]] = {1: [], 2: []}

    def stream(n: int) -> str:
        with (
            httpx.Client(timeout=300) as http,
            http.stream(
                "POST", f"{asgi_server.url}/v1/chat/completions", headers=headers, json=body
            ) as reply,
        ):
            text = ""
            for piece in reply.iter_text():
                text += piece
                places[n] = re.findall(r"^: queued, (\d+) ahead$", text, re.M)
            return text

    # Leaving the block hangs up on bob's answer first (long enough to outlast the test), then alice's run.
    with (
        ThreadPoolExecutor(2) as pool,
        worker_busy(asgi_server.url, bob_key, model="test/tiny-slow", max_tokens=6000),
    ):
        first = pool.submit(stream, 1)
        wait_for(lambda: places[1], 120, "the first queued stream never told its place")
        second = pool.submit(stream, 2)
        wait_for(lambda: places[2], 120, "the second queued stream never told its place")
        assert places[1][0] == "1" and places[2][0] == "2"  # bob's answer; bob's and alice's first
    for answer in (first, second):
        assert answer.result(timeout=300).endswith("data: [DONE]\n\n")
