"""A completion's way to the worker is one trip to a thread (`views._admit`: key, body, slot, route, send). A thread
cannot be stopped half-way: a client that hangs up meanwhile must not leave its slot taken or its generation
running for nobody."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
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


# --- The admission thread's database connection --------------------------------------------------------------
# `_admit` runs in a pooled thread that no request signal reaches: Django closes a request's connection when it is
# past CONN_MAX_AGE or broken (close_old_connections, on request_started and request_finished), and nothing did
# that for the admission threads. A connection the database dropped (a restart, an idle timeout) stayed broken in
# its thread, and every admission that read the database there failed ("the connection is closed").


@pytest.fixture
def admitted_without_a_worker(monkeypatch):  # type: ignore[no-untyped-def]
    """The completion view, admitted for real (key, body, slot), answered at once instead of by a worker."""
    from django.http import JsonResponse

    route = SimpleNamespace(snapshot=SimpleNamespace(id=1), queue=inference.QUEUE)
    monkeypatch.setattr(views, "_resolve", lambda model, user, current: (route, NO_MARKERS))
    monkeypatch.setattr(
        inference, "start_generation", lambda generation, *, queue=None: queue or inference.QUEUE
    )

    async def answered(admitted: Any, layer: Any, channel: str, *, request_id: str) -> Any:
        await inflight.release_async(admitted.lease)
        return JsonResponse({"admitted": request_id})

    monkeypatch.setattr(views, "_generate", answered)


def _complete(key: str) -> Any:
    request = RequestFactory().post(
        "/v1/chat/completions",
        {"model": "test/tiny-chat", "messages": [{"role": "user", "content": "hi"}]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    return views._complete(request, schemas.parse_chat)


async def _in_one_admission_thread() -> None:
    """Every admission of this loop in the same pooled thread, as a busy server reuses its threads."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))


@pytest.mark.django_db(transaction=True)
def test_an_admission_closes_its_threads_connection_once_past_its_age(  # type: ignore[no-untyped-def]
    alice_key: str, admitted_without_a_worker, monkeypatch
) -> None:
    from django.db import connections

    seen: list[Any] = []
    real = views._active_key

    def active_key(authorization: str, current: str | None) -> Any:
        key = real(authorization, current)  # the key's row: the thread's connection is open now
        own = connections["default"]  # this thread's (the `connection` proxy resolves in the caller's thread)
        own.close_at = 0  # as if CONN_MAX_AGE had passed meanwhile
        seen.append(own)
        return key

    monkeypatch.setattr(views, "_active_key", active_key)

    async def scenario() -> int:
        await _in_one_admission_thread()
        response = await _complete(alice_key)
        return response.status_code

    assert asyncio.run(scenario()) == 200
    assert seen and seen[0].connection is None  # closed after the admission, as after a request


@pytest.mark.django_db(transaction=True)
def test_an_admission_after_the_database_dropped_its_threads_connection_is_answered(  # type: ignore[no-untyped-def]
    alice_key: str, admitted_without_a_worker, monkeypatch
) -> None:
    from django.db import connection

    from models_app.services import catalog

    if connection.vendor != "postgresql":
        pytest.skip("only a database server drops a connection: run under PostgreSQL (CI's second run)")
    backends: list[int] = []
    real = views._active_key

    def active_key(authorization: str, current: str | None) -> Any:
        key = real(authorization, current)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backends.append(cursor.fetchone()[0])
        return key

    monkeypatch.setattr(views, "_active_key", active_key)

    def drop(backend: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
        catalog.changed()
        connection.close()

    async def scenario() -> list[int]:
        await _in_one_admission_thread()
        statuses = [(await _complete(alice_key)).status_code]
        # The server ends the admission thread's session (what a restart does to every session), and the
        # catalog changes, so the next admission reads the key's row again.
        with ThreadPoolExecutor(1) as elsewhere:  # not the admission thread: its session is the one to end
            await asyncio.get_running_loop().run_in_executor(elsewhere, drop, backends[0])
        statuses.append((await _complete(alice_key)).status_code)
        return statuses

    assert asyncio.run(scenario()) == [200, 200]
    assert backends[1] != backends[0]  # a new session


# --- Round trips on the way to the worker --------------------------------------------------------------------


@pytest.mark.django_db
def test_an_admission_reads_the_catalog_version_and_presence_in_one_round_trip(  # type: ignore[no-untyped-def]
    alice_key: str, tiny_snapshot, redis_prefix: str, monkeypatch
) -> None:
    """Each Redis round trip costs a completion ~0.1 ms of CPU on its way to the first token, and more under a
    burst of clients (their admissions share one interpreter). The version (read first) and the presence that
    routing reads come together; the in-flight slot is the only other trip before the send."""
    import time
    import uuid

    from models_app.services import workers
    from tests.redis_trips import round_trips

    workers.beat_once(hostname="inference@here", queues=["inference"], started_at=time.time())
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(
        inference, "start_generation", lambda generation, *, queue=None: sent.append(generation) or queue
    )
    body = (
        b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}'
        % tiny_snapshot.repository.repo_id.encode()
    )

    def admit() -> Any:
        return views._admit(
            schemas.parse_chat,
            body=body,
            authorization=f"Bearer {alice_key}",
            request_id=str(uuid.uuid4()),
            reply_channel="specific.test!reply",
            received_ns=time.time_ns(),
        )

    inflight.release(admit().lease)  # the key and the model's rows memoized, as on a running server
    with monkeypatch.context() as patched:
        trips = round_trips(patched)
        admitted = admit()
    inflight.release(admitted.lease)
    assert isinstance(admitted, views._Admitted)
    assert len(sent) == 2 and sent[-1]["snapshot_id"] == tiny_snapshot.id
    assert trips == ["pipeline", "EVAL"]  # version + presence, then the in-flight slot
