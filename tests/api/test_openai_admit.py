"""A completion's way to the worker is one trip to a thread (`views._admit`: key, body, slot, route, send). A thread
cannot be stopped half-way: a client that hangs up meanwhile must not leave its slot taken or its generation
running for nobody."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import RequestFactory

from models_app.models import ApiKey
from models_app.openai import schemas, views
from models_app.openai.parsing import NO_MARKERS
from models_app.services import inference, inflight
from models_app.services import redis as app_redis


@pytest.mark.django_db(transaction=True)
def test_a_client_that_hangs_up_while_its_request_is_admitted_gets_its_slot_back_and_the_request_stopped(  # type: ignore[no-untyped-def]
    alice_key: str, monkeypatch
) -> None:
    key = ApiKey.objects.get(key_hash=ApiKey.hash(alice_key))
    sending, send = threading.Event(), threading.Event()
    sent: list[str] = []

    def start_generation(generation: dict[str, Any], *, queue: str | None = None) -> str:
        sending.set()
        assert send.wait(10)  # the client hangs up meanwhile
        sent.append(generation["request_id"])
        return queue or inference.QUEUE

    route = SimpleNamespace(snapshot=SimpleNamespace(id=1), queue=inference.QUEUE)
    monkeypatch.setattr(views, "_resolve", lambda model, user, current: (route, NO_MARKERS))
    monkeypatch.setattr(inference, "start_generation", start_generation)
    request = RequestFactory().post(
        "/v1/chat/completions",
        {"model": "test/tiny-chat", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {alice_key}"},
    )

    def in_flight() -> int:
        return inflight.count("apikey", key.id)

    async def hang_up_while_admitted() -> None:
        view = asyncio.ensure_future(views._complete(request, schemas.parse_chat))
        while not sending.is_set():
            await asyncio.sleep(0.005)
        assert in_flight() == 1  # the slot is taken, the request about to be sent
        view.cancel()  # the client hung up (Django cancels the view)
        with pytest.raises(asyncio.CancelledError):
            await view
        send.set()  # the thread goes on and sends the request
        for _ in range(500):
            if sent and in_flight() == 0 and app_redis.client().exists(app_redis.key("cancel", sent[0])):
                return
            await asyncio.sleep(0.01)

    asyncio.run(hang_up_while_admitted())
    assert sent, "the request was never sent"
    assert in_flight() == 0  # its slot came back
    assert app_redis.client().exists(app_redis.key("cancel", sent[0]))  # the worker is told to stop it


@pytest.mark.django_db
def test_the_key_check_brings_the_users_limits_along(
    alice, alice_key: str, django_assert_num_queries
) -> None:  # type: ignore[no-untyped-def]
    """The API key's row, its user and the user's limits in one query: the in-flight check needs none more."""
    from models_app.api.auth import authenticate_key
    from models_app.models import UserLimits

    authenticate_key(alice_key)  # the first use also records last_used_at
    with django_assert_num_queries(1):
        key = authenticate_key(alice_key)
        assert key is not None
        defaults = UserLimits.of(key.user)
    assert defaults == UserLimits.for_user(alice.id)

    UserLimits.objects.create(user=alice, max_in_flight=3, max_api_keys=7)
    with django_assert_num_queries(1):
        key = authenticate_key(alice_key)
        assert key is not None
        limits = UserLimits.of(key.user)
    assert limits == (3, 7) == UserLimits.for_user(alice.id)
