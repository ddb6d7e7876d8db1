"""A real websocket client (the `websockets` package) against the real server (uvicorn), logged in through the
login form like a browser, streams an answer from the real inference worker."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import urllib.parse
import urllib.request

import pytest
from websockets.asyncio.client import connect

from models_app.models import Message, Usage
from models_app.services import redis as app_redis
from models_app.services.engine.sender import cancel_key
from tests.chat.test_chat_socket import wait_for_row
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db(transaction=True)


def log_in(base_url: str, username: str, password: str) -> http.cookiejar.CookieJar:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base_url}/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    body = urllib.parse.urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    request = urllib.request.Request(
        f"{base_url}/login/", data=body.encode(), headers={"Referer": f"{base_url}/login/"}
    )
    opener.open(request, timeout=10).read()
    assert any(c.name == "sessionid" for c in jar), "login failed"
    return jar


def test_a_real_client_streams_an_answer(alice, tiny_snapshot, asgi_server, inference_worker, run_async):  # type: ignore[no-untyped-def]
    jar = log_in(asgi_server.url, "alice", "alice-password")
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    ws_url = asgi_server.url.replace("http://", "ws://") + "/ws/chat/"

    async def scenario():  # type: ignore[no-untyped-def]
        async with connect(ws_url, origin=asgi_server.url, additional_headers={"Cookie": cookie}) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "chat.send",
                        "content": "hi from a real socket",
                        "snapshot_id": tiny_snapshot.id,
                        "options": {"max_tokens": 30, "temperature": 0},
                    }
                )
            )
            frames = []
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=60))
                frames.append(frame)
                if frame["type"] in ("chat.done", "chat.error"):
                    return frames

    frames = run_async(scenario())
    assert frames[0]["type"] == "chat.accepted"
    stream = frames[1:]
    assert [f["seq"] for f in stream] == list(range(len(stream)))
    assert stream[-1]["type"] == "chat.done" and stream[-1]["usage"]["completion_tokens"] == 30
    text = "".join(f["text"] for f in stream if f["type"] == "chat.delta")
    assert Message.objects.get(id=frames[0]["assistant_message_id"]).content == text == stream[-1]["text"]


def test_a_foreign_origin_is_refused(alice, asgi_server, run_async):  # type: ignore[no-untyped-def]
    from websockets.exceptions import InvalidStatus

    jar = log_in(asgi_server.url, "alice", "alice-password")
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)

    async def scenario():  # type: ignore[no-untyped-def]
        url = asgi_server.url.replace("http://", "ws://") + "/ws/chat/"
        async with connect(url, origin="http://evil.example", additional_headers={"Cookie": cookie}):
            pass

    with pytest.raises(InvalidStatus) as refused:
        run_async(scenario())
    assert refused.value.response.status_code == 403


def test_a_client_that_leaves_while_the_server_answers_stops_its_generation(
    alice, slow_model_path, asgi_server, inference_worker, run_async
):  # type: ignore[no-untyped-def]
    """uvicorn raises ClientDisconnected (an OSError, as the ASGI spec asks) from a send to a socket whose client
    has gone, and then never delivers websocket.disconnect: a consumer that lets it escape never runs its
    cleanup, so the answer is generated to the end for nobody. CI saw it as a walk-out finishing 'length'.
    Here the client sends a request and closes its TCP side at once: the server's `chat.accepted` is the send
    that finds the client gone."""
    snapshot = make_snapshot("test/slow", path=slow_model_path)
    jar = log_in(asgi_server.url, "alice", "alice-password")
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    ws_url = asgi_server.url.replace("http://", "ws://") + "/ws/chat/"

    async def scenario() -> None:
        async with connect(ws_url, origin=asgi_server.url, additional_headers={"Cookie": cookie}) as ws:
            request = {"content": "go on", "snapshot_id": snapshot.id, "options": {"max_tokens": 4000}}
            await ws.send(json.dumps({"type": "chat.send", **request}))
            ws.transport.close()  # FIN after the request: the server reads it, then finds the socket gone

    run_async(scenario())
    # Generated to the end it would take ~30 s here: wait that long, so the failure says what happened.
    ended = Message.objects.filter(role="assistant", status__in=["stopped", "complete"])
    answer = wait_for_row(ended.first, timeout=120)
    assert answer.status == "stopped"
    # Stopped because the server cancelled it, not because the worker's replies overflowed the unread channel
    # (which also ends it as 'cancelled', after a thousand replies). Cancelled while still queued, it has no
    # usage row; picked up already, its usage says cancelled.
    assert app_redis.client().exists(cancel_key(str(answer.request_id)))
    assert set(
        Usage.objects.filter(request_id=answer.request_id).values_list("finish_reason", flat=True)
    ) <= {"cancelled"}
