"""Logging out closes that session's websockets (issue 11, item 14). Before, a chat or downloads socket opened
before logout stayed authenticated for as long as it stayed open: a shared computer's next user, or a script
holding the socket, kept chatting as the user who had logged out.

Through the real server (uvicorn, the Redis channel layer), logged in through the login form twice (two
sessions of one user, as two browsers): logging one session out closes both of its sockets with 4401 (the code
the pages already read as "log in again"), and the other session's sockets stay open and keep working."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.chat.test_chat_live import log_in

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

UNAUTHENTICATED = 4401


def cookie_header(jar: http.cookiejar.CookieJar) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def log_out(base_url: str, jar: http.cookiejar.CookieJar) -> None:
    """The Log out button: a POST with the page's CSRF token, as the browser sends it."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base_url}/models/", timeout=30).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    request = urllib.request.Request(
        f"{base_url}/logout/",
        data=urllib.parse.urlencode({"csrfmiddlewaretoken": token}).encode(),
        headers={"Referer": f"{base_url}/models/", "Origin": base_url},
    )
    opener.open(request, timeout=30).read()
    assert not any(c.name == "sessionid" for c in jar), "logout did not end the session"


async def still_works(ws: ClientConnection, path: str) -> dict[str, Any]:
    """An authenticated socket answers: the chat socket replies to an unknown message type with chat.error; the
    read-only downloads socket stays open (no close frame within a few seconds)."""
    if path == "/ws/chat/":
        await ws.send(json.dumps({"type": "nonsense"}))
        return json.loads(await asyncio.wait_for(ws.recv(), 30))
    code = await closed_with(ws, 3)
    return {"type": "open"} if code is None else {"type": "closed", "code": code}


async def closed_with(ws: ClientConnection, timeout: float) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed:
        return ws.close_code
    except TimeoutError:
        return None


def test_logout_closes_that_sessions_sockets_and_no_other(alice, asgi_server) -> None:
    base = asgi_server.url
    leaving, staying = log_in(base, "alice", "alice-password"), log_in(base, "alice", "alice-password")
    ws_base = base.replace("http://", "ws://")
    paths = ["/ws/chat/", "/ws/downloads/"]

    async def scenario() -> tuple[list[int | None], list[dict[str, Any]]]:
        def open_socket(jar: http.cookiejar.CookieJar, path: str) -> Any:
            return connect(ws_base + path, origin=base, additional_headers={"Cookie": cookie_header(jar)})

        sockets = {
            (who, path): await open_socket(jar, path)
            for who, jar in (("leaving", leaving), ("staying", staying))
            for path in paths
        }
        try:
            # Both sessions' sockets are authenticated and past their first frame before the logout.
            for (_who, path), ws in sockets.items():
                first = await still_works(ws, path) if path == "/ws/chat/" else json.loads(await ws.recv())
                assert first["type"] in ("chat.error", "downloads.snapshot"), first
            await asyncio.to_thread(log_out, base, leaving)
            codes = [await closed_with(sockets[("leaving", path)], 30) for path in paths]
            others = [await still_works(sockets[("staying", path)], path) for path in paths]
            return codes, others
        finally:
            for ws in sockets.values():
                await ws.close()

    codes, others = asyncio.run(scenario())
    assert codes == [UNAUTHENTICATED, UNAUTHENTICATED]
    assert [frame["type"] for frame in others] == ["chat.error", "open"]
    assert others[0]["code"] == "invalid_request"
