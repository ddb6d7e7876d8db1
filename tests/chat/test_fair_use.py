"""Fair use of the single inference worker from the chat socket (issue 11 item 5): a user's answers in flight
are bounded, chat page and API together, and an oversized conversation is refused before anything is saved.
The real ASGI app (socket in-process, API served by uvicorn), the real Redis, a REAL inference worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from django.conf import settings

from devkit.processes import wait_for
from models_app.models import ApiKey, Conversation, Message
from models_app.services import inflight
from tests.chat.conftest import communicator, receive_until_end, session_cookie
from tests.factories import make_snapshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inference_worker")]

LONG = {"max_tokens": 4000, "temperature": 0}


@pytest.fixture
def slow_snapshot(slow_model_path):  # type: ignore[no-untyped-def]
    return make_snapshot("test/tiny-slow", path=slow_model_path)


async def answers_to(comm, count: int) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The socket's direct answers (chat.accepted, or a chat.error of the client's own making) to `count`
    frames it was sent, skipping the worker's replies that interleave."""
    answers: list[dict[str, Any]] = []
    while len(answers) < count:
        frame = await comm.receive_json_from(timeout=60)
        if frame["type"] == "chat.accepted" or (frame["type"] == "chat.error" and frame["seq"] == -1):
            answers.append(frame)
    return answers


def test_one_socket_cannot_queue_more_answers_than_the_users_limit(  # type: ignore[no-untyped-def]
    client, alice, slow_snapshot, run_async
) -> None:
    """The issue's socket queued 30 generations; now the user's limit applies, and refused messages leave no
    trace. A stopped answer gives its slot back at once."""
    limit = settings.INFERENCE_MAX_IN_FLIGHT_PER_USER
    cookie = session_cookie(client, alice)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        for i in range(30):
            await comm.send_json_to(
                {
                    "type": "chat.send",
                    "content": f"story {i}",
                    "snapshot_id": slow_snapshot.id,
                    "options": LONG,
                }
            )
        answers = await answers_to(comm, 30)
        # Stop the last one accepted, still queued behind the others: its slot is free at once, without
        # waiting for the worker to reach it and throw it away.
        await comm.send_json_to({"type": "chat.stop", "request_id": answers[limit - 1]["request_id"]})
        await comm.send_json_to(
            {"type": "chat.send", "content": "one more", "snapshot_id": slow_snapshot.id, "options": LONG}
        )
        [again] = await answers_to(comm, 1)
        await comm.disconnect()
        return answers, again

    answers, again = run_async(scenario())

    assert [a["type"] for a in answers] == ["chat.accepted"] * limit + ["chat.error"] * (30 - limit)
    refused = answers[limit]
    assert refused["code"] == "too_many_requests"
    assert f"already have {limit} answers being written (chat and API together)" in refused["message"]
    assert again["type"] == "chat.accepted"
    assert Conversation.objects.count() == limit + 1  # nothing saved for the refused ones
    assert Message.objects.count() == 2 * (limit + 1)
    wait_for(lambda: inflight.count("user", alice.id) == 0, 60, "the socket's slots were not given back")


def test_the_chat_page_and_the_api_share_the_users_limit(  # type: ignore[no-untyped-def]
    client, alice, bob, slow_snapshot, asgi_server, run_async
) -> None:
    limit = settings.INFERENCE_MAX_IN_FLIGHT_PER_USER
    cookie = session_cookie(client, alice)
    alice_key, bob_key = ApiKey.issue(user=alice, name="ide")[1], ApiKey.issue(user=bob, name="ide")[1]

    def api(raw_key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=raw_key, max_retries=0, timeout=300)

    hi = [{"role": "user", "content": "hi"}]
    bobs_answer: list[Any] = []

    async def scenario() -> None:
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        for i in range(limit):
            await comm.send_json_to(
                {
                    "type": "chat.send",
                    "content": f"story {i}",
                    "snapshot_id": slow_snapshot.id,
                    "options": LONG,
                }
            )
        answers = await answers_to(comm, limit)
        assert {a["type"] for a in answers} == {"chat.accepted"}

        # Alice's API key has no slot left: her answers on the chat page hold them all.
        with pytest.raises(openai.RateLimitError) as refused:
            api(alice_key).chat.completions.create(model="test/tiny-slow", messages=hi, max_tokens=2)
        assert "chat page and API together" in refused.value.message
        # Bob is not Alice: his request is admitted, and queues behind her answers.
        bob_asks = threading.Thread(
            target=lambda: bobs_answer.append(
                api(bob_key).chat.completions.create(model="test/tiny-slow", messages=hi, max_tokens=2)
            )
        )
        bob_asks.start()
        wait_for(lambda: inflight.count("user", bob.id) == 1, 60, "bob's request was not admitted")

        for answer in answers:
            await comm.send_json_to({"type": "chat.stop", "request_id": answer["request_id"]})
        for answer in answers:
            await receive_until_end(comm, answer["request_id"])
        await comm.disconnect()
        bob_asks.join(300)

    run_async(scenario())
    assert bobs_answer and bobs_answer[0].choices
    answer = api(alice_key).chat.completions.create(model="test/tiny-slow", messages=hi, max_tokens=2)
    assert answer.usage.completion_tokens == 2
    assert inflight.count("user", alice.id) == inflight.count("user", bob.id) == 0


def test_an_oversized_conversation_is_a_chat_error_and_loses_nothing(  # type: ignore[no-untyped-def]
    client, alice, tiny_snapshot, run_async, settings
) -> None:
    settings.INFERENCE_MAX_MESSAGES = 4
    conversation = Conversation.objects.create(user=alice, title="long", snapshot=tiny_snapshot)
    for role in ("user", "assistant", "user", "assistant"):
        Message.objects.create(
            conversation=conversation, role=role, content=f"{role} says hi", status="complete"
        )
    cookie = session_cookie(client, alice)

    async def scenario() -> list[dict[str, Any]]:
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        await comm.send_json_to({"type": "chat.send", "conversation_id": conversation.id, "content": "and?"})
        await comm.send_json_to({"type": "chat.regenerate", "conversation_id": conversation.id})
        answers = await answers_to(comm, 2)
        await comm.disconnect()
        return answers

    sent, regenerated = run_async(scenario())

    assert sent["type"] == "chat.error" and sent["code"] == "invalid_request"
    assert "at most 4 messages; this one has 5" in sent["message"]
    assert regenerated["type"] == "chat.accepted"  # 3 messages once the last answer is replaced
    contents = list(conversation.messages.order_by("id").values_list("content", flat=True))
    assert contents[:3] == ["user says hi", "assistant says hi", "user says hi"]
    assert "and?" not in contents  # the refused message was not saved
    wait_for(lambda: inflight.count("user", alice.id) == 0, 60, "a slot was not given back")


@contextmanager
def worker_held_by(url: str, raw_key: str) -> Iterator[threading.Event]:
    """Another user's long API answers (longer than any test waits) fill every slot of the inference worker
    (INFERENCE_SLOTS, batched) until the returned event is set (or the block ends): then the client hangs up,
    which stops them."""
    slots = settings.INFERENCE_SLOTS
    streaming, hang_up = threading.Semaphore(0), threading.Event()

    def ask() -> None:
        stream = openai.OpenAI(
            base_url=f"{url}/v1", api_key=raw_key, max_retries=0, timeout=300
        ).chat.completions.create(
            model="test/tiny-slow", messages=[{"role": "user", "content": "hi"}], max_tokens=6000, stream=True
        )
        started = False
        for chunk in stream:
            if not started and chunk.choices and chunk.choices[0].delta.content:
                started = True
                streaming.release()
            if hang_up.is_set():
                break
        stream.close()

    askers = [threading.Thread(target=ask) for _ in range(slots)]
    for asker in askers:
        asker.start()
    for _ in range(slots):
        assert streaming.acquire(timeout=120), "the long answers never all started"
    try:
        yield hang_up
    finally:
        hang_up.set()
        for asker in askers:
            asker.join(300)


def test_a_queued_answer_tells_the_page_how_many_are_ahead(  # type: ignore[no-untyped-def]
    client, alice, bob, slow_snapshot, tiny_snapshot, asgi_server, run_async
) -> None:
    """Bob's long API answer holds the worker; Alice's message waits, and her page hears `chat.queued` with
    her place ("waiting for the model, 1 ahead") until the worker takes it."""
    cookie = session_cookie(client, alice)

    async def scenario(hang_up: threading.Event) -> list[dict[str, Any]]:
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        await comm.send_json_to(
            {
                "type": "chat.send",
                "content": "hi",
                "snapshot_id": tiny_snapshot.id,
                "options": {"max_tokens": 4},
            }
        )
        [accepted] = await answers_to(comm, 1)
        frames = []
        while True:
            frame = await comm.receive_json_from(timeout=120)
            frames.append(frame)
            if frame["type"] == "chat.queued":
                hang_up.set()  # let the worker go on to alice's answer
            if frame["type"] in ("chat.done", "chat.error"):
                break
        await comm.disconnect()
        assert all(f["request_id"] == accepted["request_id"] for f in frames)
        return frames

    with worker_held_by(asgi_server.url, ApiKey.issue(user=bob, name="ide")[1]) as hang_up:
        frames = run_async(scenario(hang_up))
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "chat.queued" and frames[0]["ahead"] == 1
    assert kinds.index("chat.started") > kinds.index("chat.queued") and kinds[-1] == "chat.done"
    assert "chat.queued" not in kinds[kinds.index("chat.started") :]


@pytest.mark.browser
def test_the_chat_page_shows_a_waiting_answers_place(  # type: ignore[no-untyped-def]
    alice, bob, slow_snapshot, tiny_snapshot, asgi_server
) -> None:
    """In Chromium: while Bob's answer holds the worker, Alice's answer reads "waiting for the model, 1 ahead",
    then streams and completes once the worker is free."""
    from playwright.sync_api import expect

    from tests.browser.helpers import launch_browser, login, new_page

    bob_key = ApiKey.issue(user=bob, name="ide")[1]  # database work outside Playwright's event loop
    with worker_held_by(asgi_server.url, bob_key) as hang_up, launch_browser() as browser:
        page = new_page(browser, asgi_server.url)
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        login(page, "alice", "alice-password")
        page.goto("/chat/")
        page.wait_for_selector("#chat[data-connected]")  # a send before the socket opens is refused
        page.select_option("#model", str(tiny_snapshot.id))
        page.fill("#prompt", "hi")
        page.press("#prompt", "Enter")

        answer = page.locator(".msg.assistant").last
        wait = 60_000  # expect() has its own 5 s default; the machine may be loaded
        expect(answer.locator("[data-role=status]")).to_have_text(
            "waiting for the model, 1 ahead", timeout=wait
        )
        expect(answer).to_have_attribute("data-status", "pending")
        hang_up.set()
        expect(answer).to_have_attribute("data-status", "complete", timeout=wait)
        assert answer.locator("[data-role=body]").text_content()
        assert errors == []
