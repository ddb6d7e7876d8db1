"""Websockets through the real server (uvicorn, the production ASGI stack): a missing or foreign Origin is
refused on both sockets, and a user's downloads socket carries nothing about another user's job while that
job really runs on a worker.

Proved elsewhere, not repeated here:
- a foreign Origin: tests/chat/test_chat_live.py::test_a_foreign_origin_is_refused (ws/chat/, real server) and
  tests/pages/test_downloads_consumer.py::test_a_foreign_origin_is_refused (ws/downloads/)
- an anonymous user: tests/chat/test_chat_socket.py::test_anonymous_sockets_are_closed_with_4401 and
  tests/pages/test_downloads_consumer.py::test_anonymous_is_refused
- user A asking for user B's conversation (send into it, regenerate it, stop its answer):
  tests/chat/test_chat_socket.py::test_two_users_at_once_each_get_their_own_complete_stream
- a stray event about B's job in A's group is dropped:
  tests/pages/test_downloads_consumer.py::test_snapshot_on_connect_then_only_own_updates
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from models_app.services import hub as hub_service
from tests.chat.test_chat_live import log_in
from tests.downloads.conftest import wait_job

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

SOCKETS = ["/ws/chat/", "/ws/downloads/"]


def cookie_for(base_url: str, username: str) -> str:
    jar = log_in(base_url, username, f"{username}-password")
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def ws_url(base_url: str, path: str) -> str:
    return base_url.replace("http://", "ws://") + path


@pytest.mark.parametrize("path", SOCKETS)
@pytest.mark.parametrize(
    "origin", [None, "null", "http://127.0.0.1.evil.test", "http://localhost@evil.test", "file://"]
)
def test_a_missing_or_foreign_origin_is_refused(alice, asgi_server, path: str, origin: str | None) -> None:
    cookie = cookie_for(asgi_server.url, "alice")

    async def scenario() -> None:
        async with connect(
            ws_url(asgi_server.url, path), origin=origin, additional_headers={"Cookie": cookie}
        ):
            pass

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(scenario())
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("path", SOCKETS)
def test_the_same_user_with_the_right_origin_gets_in(alice, asgi_server, path: str) -> None:
    cookie = cookie_for(asgi_server.url, "alice")

    async def scenario() -> dict[str, Any] | None:
        url = ws_url(asgi_server.url, path)
        async with connect(url, origin=asgi_server.url, additional_headers={"Cookie": cookie}) as ws:
            if path == "/ws/downloads/":
                return json.loads(await asyncio.wait_for(ws.recv(), 5))
            await ws.send(json.dumps({"type": "nonsense"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 5))

    frame = asyncio.run(scenario())
    assert frame is not None
    assert frame["type"] in ("downloads.snapshot", "chat.error")


@pytest.mark.usefixtures("download_worker")
def test_a_users_socket_never_carries_another_users_running_job(
    hub, publish, alice, bob, asgi_server
) -> None:
    repo_id, _ = publish("bobs", extra={"padding.bin": os.urandom(1_500_000)})
    hub.faults.throttle(1_000_000, pattern="padding.bin")  # long enough for several progress frames
    cookies = {name: cookie_for(asgi_server.url, name) for name in ("alice", "bob")}
    frames: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}

    async def watch(name: str, stop: asyncio.Event) -> None:
        url = ws_url(asgi_server.url, "/ws/downloads/")
        async with connect(url, origin=asgi_server.url, additional_headers={"Cookie": cookies[name]}) as ws:
            with contextlib.suppress(ConnectionClosed):
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        frames[name].append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))

    async def scenario() -> int:
        stop = asyncio.Event()
        watchers = [asyncio.create_task(watch(name, stop)) for name in ("alice", "bob")]
        for _ in range(100):  # both connected and past their snapshot before the job exists
            if frames["alice"] and frames["bob"]:
                break
            await asyncio.sleep(0.1)
        job = await asyncio.to_thread(hub_service.download_model, repo_id, user=bob)
        done = await asyncio.to_thread(wait_job, job.id)
        await asyncio.sleep(0.5)  # the last state frame is on its way
        stop.set()
        await asyncio.gather(*watchers)
        return done.id

    job_id = asyncio.run(scenario())
    bobs = [f for f in frames["bob"] if f.get("job_id") == job_id]
    assert {f["type"] for f in bobs} >= {"download.progress", "download.state"}
    assert bobs[-1]["state"] == "succeeded"
    assert [f["type"] for f in frames["alice"]] == ["downloads.snapshot"]
    assert frames["alice"][0]["jobs"] == []
    assert repo_id not in json.dumps(frames["alice"])
