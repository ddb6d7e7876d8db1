"""The websocket Origin must be the request's own origin (scheme, host and port) or one of CSRF_TRUSTED_ORIGINS,
as Django's CSRF check requires for HTTP (issue 11, item 2). Channels' AllowedHostsOriginValidator compared
hosts only: a page on another port of the same host, or plain http:// in front of an https:// deployment,
opened both sockets with the visitor's session cookie.

The attack itself runs in real Chromium: logged in on the product, the user visits a page served from another
localhost port whose script opens /ws/chat/ and /ws/downloads/ on the product. Neither opens. The same script
run from the product's own page opens both (so the test can tell an open socket from a refused one)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from dashboard.ws_origin import origin_allowed
from devkit.redis_server import free_port
from tests.browser.helpers import launch_browser, login, new_page

PROXY = ("HTTP_X_FORWARDED_PROTO", "https")


def scope(host: str, origin: str | list[str] | None, *, scheme: str = "ws", **headers: str) -> dict[str, Any]:
    raw = [(b"host", host.encode())]
    origins = [origin] if isinstance(origin, str) else (origin or [])
    raw += [(b"origin", o.encode()) for o in origins]
    raw += [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()]
    return {
        "type": "websocket",
        "scheme": scheme,
        "path": "/ws/chat/",
        "query_string": b"",
        "headers": raw,
        "server": ("10.0.0.5", 8000),
        "client": ("10.0.0.9", 40000),
    }


def handshake(ws_scope: dict[str, Any]) -> str:
    """The product's ASGI application (dashboard.asgi) answers a websocket handshake with these headers:
    "accepted" when it reached a consumer (an anonymous chat socket is accepted, then closed with 4401),
    "refused" when the Origin check denied it (closed before accept: HTTP 403)."""
    from dashboard.asgi import application

    async def run() -> str:
        comm = WebsocketCommunicator(application, "/ws/chat/", headers=ws_scope["headers"])
        connected, _ = await comm.connect(timeout=30)
        await comm.disconnect()
        return "accepted" if connected else "refused"

    return async_to_sync(run)()


@pytest.fixture
def production(settings):  # type: ignore[no-untyped-def]
    """README's production values: one host name behind a TLS proxy."""
    settings.ALLOWED_HOSTS = ["models.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://models.example.com"]
    settings.SECURE_PROXY_SSL_HEADER = PROXY
    return settings


@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("https://models.example.com", True),
        ("http://models.example.com", False),
        ("http://models.example.com:8080", False),
        ("https://models.example.com:8443", False),
        ("https://evil.example.com", False),
        ("https://models.example.com.evil.test", False),
        ("null", False),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_behind_the_tls_proxy_only_the_https_origin_gets_in(production, origin: str, allowed: bool) -> None:
    ws_scope = scope("models.example.com", origin, x_forwarded_proto="https")
    assert origin_allowed(ws_scope) is allowed
    assert handshake(ws_scope) == ("accepted" if allowed else "refused")


def test_behind_the_proxy_the_forwarded_scheme_decides_not_the_trusted_list(production) -> None:  # type: ignore[no-untyped-def]
    production.CSRF_TRUSTED_ORIGINS = []
    assert origin_allowed(
        scope("models.example.com", "https://models.example.com", x_forwarded_proto="https")
    )
    # The proxy said plain http: the https page is then another origin, as Django's CSRF check would say.
    assert not origin_allowed(
        scope("models.example.com", "https://models.example.com", x_forwarded_proto="http")
    )
    assert origin_allowed(scope("models.example.com", "http://models.example.com", x_forwarded_proto="http"))


@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("http://127.0.0.1:8103", True),
        ("http://127.0.0.1:9107", False),
        ("http://127.0.0.1", False),
        ("https://127.0.0.1:8103", False),
        ("http://localhost:8103", False),
        ("http://127.0.0.1:8103/", False),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_a_direct_connection_needs_scheme_host_and_port_to_match(
    settings, origin: str, allowed: bool
) -> None:  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    settings.CSRF_TRUSTED_ORIGINS = []
    ws_scope = scope("127.0.0.1:8103", origin)
    assert origin_allowed(ws_scope) is allowed
    assert handshake(ws_scope) == ("accepted" if allowed else "refused")


def test_wss_is_an_https_origin(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["models.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []
    assert origin_allowed(scope("models.example.com", "https://models.example.com", scheme="wss"))
    assert not origin_allowed(scope("models.example.com", "http://models.example.com", scheme="wss"))


def test_forwarded_host_counts_only_when_django_is_told_to_trust_it(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["models.example.com", "internal:8000"]
    settings.CSRF_TRUSTED_ORIGINS = []
    forwarded = scope("internal:8000", "http://models.example.com", x_forwarded_host="models.example.com")
    assert not origin_allowed(forwarded)
    settings.USE_X_FORWARDED_HOST = True
    assert origin_allowed(forwarded)


def test_trusted_origins_are_read_like_django_csrf_reads_them(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["models.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.com", "http://tools.internal:8080"]
    assert origin_allowed(scope("models.example.com", "https://chat.example.com"))
    assert origin_allowed(scope("models.example.com", "https://example.com"))
    assert origin_allowed(scope("models.example.com", "http://tools.internal:8080"))
    assert not origin_allowed(scope("models.example.com", "http://chat.example.com"))
    assert not origin_allowed(scope("models.example.com", "http://tools.internal"))
    assert not origin_allowed(scope("models.example.com", "https://example.com.evil.test"))


def test_a_missing_repeated_or_unreadable_origin_is_refused(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = []
    assert not origin_allowed(scope("127.0.0.1:8103", None))
    assert not origin_allowed(scope("127.0.0.1:8103", ["http://127.0.0.1:8103", "http://127.0.0.1:9107"]))
    unreadable = scope("127.0.0.1:8103", None)
    unreadable["headers"].append((b"origin", "http://127.0.0.1:8103\u00e9".encode("latin1")))
    assert not origin_allowed(unreadable)


def test_a_host_outside_allowed_hosts_is_refused_even_with_a_matching_origin(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = []
    assert not origin_allowed(scope("evil.test", "http://evil.test"))


# --- The attack in a real browser ---------------------------------------------------------------------------

# Opens both sockets on the product and records what happened to each: "open", the first frame's type, the
# close code. Run from the foreign page and from the product's own page.
PROBE = """
async (base) => {
  const probe = (path) => new Promise((resolve) => {
    const seen = {path, opened: false, frame: null, code: null};
    const ws = new WebSocket(base.replace('http', 'ws') + path);
    ws.onopen = () => {
      seen.opened = true;
      if (path === '/ws/chat/') ws.send(JSON.stringify({type: 'nonsense'}));
    };
    ws.onmessage = (event) => { seen.frame = JSON.parse(event.data).type; ws.close(); };
    ws.onclose = (event) => { seen.code = event.code; resolve(seen); };
    setTimeout(() => resolve(seen), 10000);
  });
  return [await probe('/ws/chat/'), await probe('/ws/downloads/')];
}
"""


class _ForeignPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title><p>Nothing to see here.</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def foreign_site() -> Iterator[str]:
    """A page served from another port of the same host: another origin, the same site for cookies."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _ForeignPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_page_on_another_port_cannot_open_the_users_sockets(
    alice, asgi_server, foreign_site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with launch_browser() as browser:
        page = new_page(browser, asgi_server.url)
        login(page, "alice", "alice-password")

        own = page.evaluate(PROBE, asgi_server.url)
        assert [(s["opened"], s["frame"]) for s in own] == [
            (True, "chat.error"),
            (True, "downloads.snapshot"),
        ]

        page.goto(foreign_site)
        cookies = {c["name"] for c in page.context.cookies(asgi_server.url)}
        assert (
            "sessionid" in cookies
        )  # the browser would send the session along: only the Origin check stops it
        foreign = page.evaluate(PROBE, asgi_server.url)
        assert [(s["path"], s["opened"], s["frame"]) for s in foreign] == [
            ("/ws/chat/", False, None),
            ("/ws/downloads/", False, None),
        ], foreign
        assert all(s["code"] == 1006 for s in foreign)  # the handshake was refused
