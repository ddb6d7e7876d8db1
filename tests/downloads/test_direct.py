"""hub_direct: a small file's GET on a kept-alive http.client connection, under the same guard as
huggingface_hub's client (deadlines, cancel, stalls, checked headers), over HTTP and TLS; anything but a plain
200 goes back to huggingface_hub's client, and an error answer is raised as huggingface_hub raises it.

Each test scripts a raw HTTP/1.1 server (the local Hub cannot misbehave in these ways between two requests
of one connection)."""

from __future__ import annotations

import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore2
import pytest
from huggingface_hub import errors as hf_errors

from models_app.services.errors import DownloadCancelled, DownloadError
from models_app.services.hub_direct import Body, DirectClient
from models_app.services.hub_progress import JobMonitor

BODY = bytes(range(256)) * 40  # 10 kB
Respond = Callable[
    [socket.socket, int, str], bool
]  # (connection, request number, path): keep the connection?


class _Quiet(socketserver.ThreadingTCPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handshake the client refuses (the untrusted-certificate test) is the point, not a traceback."""
        if not isinstance(sys.exc_info()[1], ssl.SSLError):
            super().handle_error(request, client_address)


class ScriptedServer:
    """Reads each request's head and answers it with `respond`; counts connections and requests."""

    def __init__(self, respond: Respond, tls: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.requests: list[str] = []
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                if tls is not None:
                    sock = tls.wrap_socket(sock, server_side=True)
                server.connections += 1
                reader = sock.makefile("rb")
                while True:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            return
                        head += line
                    path = head.split(b" ", 2)[1].decode()
                    server.requests.append(path)
                    if not respond(sock, len(server.requests), path):
                        sock.close()
                        return

        self._server = _Quiet(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def ok(sock: socket.socket, body: bytes = BODY, extra: str = "") -> None:
    sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body)


@pytest.fixture
def serve(settings) -> Iterator[Callable[..., ScriptedServer]]:
    """Start a scripted server, as the Hub (HF_ENDPOINT) of the test."""
    servers: list[ScriptedServer] = []

    def start(respond: Respond, tls: ssl.SSLContext | None = None) -> ScriptedServer:
        servers.append(ScriptedServer(respond, tls))
        settings.HF_ENDPOINT = servers[-1].url("", "https" if tls else "http")
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def monitor() -> JobMonitor:
    return JobMonitor(job_id=0, task_id="t", repo_id="org/repo", revision="main", owner_id=None)


def client(server: ScriptedServer, scheme: str = "http", stall: float = 5.0) -> DirectClient:
    direct = DirectClient.for_endpoint(server.url("", scheme), {"user-agent": "test"}, stall=stall)
    assert direct is not None
    return direct


def read_all(body: Body | None) -> bytes:
    assert body is not None
    try:
        return b"".join(iter(lambda: body.read(4096), b""))
    finally:
        body.close()


def fetch_files(server: ScriptedServer, count: int, scheme: str = "http") -> tuple[DirectClient, list[bytes]]:
    """`count` files, one after another on one client (one thread)."""
    direct = client(server, scheme)
    urls = [server.url(f"/org/repo/resolve/main/f{i}", scheme) for i in range(count)]
    return direct, [read_all(direct.get(url, monitor())) for url in urls]


def test_one_kept_alive_connection_carries_every_file(serve) -> None:
    server = serve(lambda sock, n, path: ok(sock) or True)

    direct, bodies = fetch_files(server, 5)

    assert bodies == [BODY] * 5
    assert server.connections == 1 and len(server.requests) == 5
    direct.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_again(serve) -> None:
    # HTTP/1.1 without "Connection: close", then the server hangs up: as a Hub's idle timeout does.
    server = serve(lambda sock, n, path: ok(sock) or False)

    _, bodies = fetch_files(server, 4)

    # Nothing of an answer came on the dead connection: a GET is sent again, once, on a new one.
    assert bodies == [BODY] * 4
    assert server.connections == 4 and len(server.requests) == 4


def test_an_error_answer_is_raised_as_huggingface_hub_raises_it_without_asking_twice(serve) -> None:
    def not_found(sock: socket.socket, n: int, path: str) -> bool:
        message = b'{"error": "Entry not found"}'
        sock.sendall(
            b"HTTP/1.1 404 Not Found\r\nX-Error-Code: EntryNotFound\r\nX-Error-Message: Entry not found\r\n"
            + f"Content-Type: application/json\r\nContent-Length: {len(message)}\r\n\r\n".encode()
            + message
        )
        return True

    server = serve(not_found)
    direct = client(server)

    with pytest.raises(hf_errors.RemoteEntryNotFoundError, match="Entry Not Found"):
        direct.get(server.url("/org/repo/resolve/main/missing.json"), monitor())
    assert server.requests == ["/org/repo/resolve/main/missing.json"]


def test_a_redirect_or_a_compressed_body_goes_back_to_huggingface_hubs_client(serve) -> None:
    def odd(sock: socket.socket, n: int, path: str) -> bool:
        if path.endswith("redirected"):
            sock.sendall(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
        elif path.endswith("compressed"):
            ok(sock, b"\x1f\x8b", "Content-Encoding: gzip\r\n")
        elif path.endswith("chunked"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
        else:
            ok(sock)
        return True

    server = serve(odd)
    direct = client(server)
    watched = monitor()

    assert direct.get(server.url("/org/repo/resolve/main/redirected"), watched) is None
    assert direct.get(server.url("/org/repo/resolve/main/compressed"), watched) is None
    assert direct.get(server.url("/org/repo/resolve/main/chunked"), watched) is None
    assert direct.get("http://other.example/org/repo/resolve/main/f", watched) is None  # another origin
    assert read_all(direct.get(server.url("/org/repo/resolve/main/plain"), watched)) == BODY
    # The redirect's empty body was read to its end: its connection went on. The compressed and the
    # chunked bodies were left unread: each closed its connection.
    assert server.connections == 3 and len(server.requests) == 4


def test_an_answer_that_does_not_parse_goes_back_to_huggingface_hubs_client(serve) -> None:
    def garbled(sock: socket.socket, n: int, path: str) -> bool:
        sock.sendall(b"ICY 200 OK\r\n\r\n" if n == 1 else b"HTTP/1.1 200 OK\r\n no-colon folded\r\n\r\n")
        return True

    server = serve(garbled)
    direct = client(server)

    assert direct.get(server.url("/org/repo/resolve/main/a"), monitor()) is None
    assert direct.get(server.url("/org/repo/resolve/main/b"), monitor()) is None
    assert server.connections == 2


def silent_after(sent: bytes, hold: threading.Event) -> Respond:
    def respond(sock: socket.socket, n: int, path: str) -> bool:
        sock.sendall(sent)
        hold.wait(30)
        return False

    return respond


@pytest.fixture
def hold() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def test_a_body_that_stops_coming_raises_the_stall_timeout(serve, hold) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    server = serve(silent_after(head + BODY[:1000], hold))
    direct = client(server, stall=0.6)
    body = direct.get(server.url("/org/repo/resolve/main/f"), monitor())
    assert body is not None

    started = time.monotonic()
    assert body.read(4096) == BODY[:1000]
    with pytest.raises(httpcore2.ReadTimeout):
        body.read(4096)
    assert 0.5 < time.monotonic() - started < 5
    body.close()


def test_cancel_reaches_a_read_the_server_keeps_waiting(serve, hold) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    server = serve(silent_after(head, hold))
    direct = client(server, stall=30)
    watched = monitor()
    body = direct.get(server.url("/org/repo/resolve/main/f"), watched)
    assert body is not None
    threading.Timer(0.3, watched.abort, [DownloadCancelled()]).start()

    started = time.monotonic()
    with pytest.raises(DownloadCancelled):
        body.read(4096)
    assert time.monotonic() - started < 5  # READ_SLICE pieces: not the 30 s stall timeout
    body.close()


def test_headers_that_never_come_fail_the_job_at_the_header_deadline(serve, hold, settings) -> None:
    settings.HUB_HEADER_TIMEOUT = 0.5
    server = serve(silent_after(b"", hold))
    direct = client(server, stall=30)
    watched = monitor()

    with pytest.raises(DownloadError, match="HUB_HEADER_TIMEOUT") as raised:
        direct.get(server.url("/org/repo/resolve/main/f"), watched)
    assert (
        watched.aborted is raised.value
    )  # the job's other transfers stop too, as the guarded transport does


def test_a_proxy_or_a_broken_header_leaves_the_files_to_huggingface_hubs_client(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert DirectClient.for_endpoint("https://huggingface.co", {}, stall=5) is None
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert DirectClient.for_endpoint("https://huggingface.co", {}, stall=5) is not None
    assert DirectClient.for_endpoint("ftp://hub.example", {}, stall=5) is None
    # A token with a line break would write a header of its own here; httpx2 refuses it instead.
    smuggled = {"authorization": "Bearer hf_x\r\nX-Other: 1"}
    assert DirectClient.for_endpoint("https://huggingface.co", smuggled, stall=5) is None


@pytest.fixture
def tls_pair(tmp_path: Path, monkeypatch) -> ssl.SSLContext:
    """A self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE (as httpx2 trusts it): the
    server side's context."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_tls_keeps_its_connection_alive_and_its_reads_watched(serve, tls_pair, hold) -> None:
    files = serve(lambda sock, n, path: ok(sock) or True, tls=tls_pair)
    _, bodies = fetch_files(files, 3, "https")
    assert bodies == [BODY] * 3 and files.connections == 1

    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    stalled = serve(silent_after(head, hold), tls=tls_pair)
    body = client(stalled, "https", stall=0.6).get(
        stalled.url("/org/repo/resolve/main/f", "https"), monitor()
    )
    assert body is not None
    with pytest.raises(httpcore2.ReadTimeout):
        body.read(4096)
    body.close()


def test_an_untrusted_certificate_is_refused(serve, tls_pair, monkeypatch) -> None:
    server = serve(lambda sock, n, path: ok(sock) or True, tls=tls_pair)
    monkeypatch.delenv("SSL_CERT_FILE")
    direct = client(server, "https")

    # Refused at the handshake: handed back to huggingface_hub's client, which refuses it in its own words.
    assert direct.get(server.url("/org/repo/resolve/main/f", "https"), monitor()) is None
    assert server.requests == []
