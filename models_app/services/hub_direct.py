"""A small file's GET on a plain `http.client` connection kept alive per thread: hub_batch's fast path.

httpx2 (huggingface_hub's client) with the transport guard costs ~1.4 ms of CPU per request before the first
byte is written: its client, pool, stream and guard layers. `http.client` costs ~0.6 ms, a third of it in
the email package parsing the headers. On a pull of 200 files of 50 kB from the local Hub that was the whole
difference: 300 ms for httpx2 alone, 140 ms for http.client on two connections, 190 ms for curl on one
(measured side by side; the issue-15 note). A pull of many small files (a tokenizer's pieces, a sharded small
model) is mostly that cost. So the exchange here is HTTP/1.1 at its plainest, written out: a GET, a status
line and headers, a body of Content-Length bytes; a connection is reused when its answer was read to the
end, and a request that finds its kept-alive connection closed by the server is sent once more on a new one
(nothing of the answer had come: a GET can be repeated).

The guard holds here as on huggingface_hub's client (hub_progress.GuardedTransport):
- every socket read goes through `hub_guard.watched_read`: READ_SLICE pieces, and between them the header
  deadline (HUB_HEADER_TIMEOUT), the caller's deadline, the job's cancel, and the stall timeout
  (DOWNLOAD_STALL_TIMEOUT without a byte);
- the answer's headers go through `hub_guard.check_response_headers`, and the job's monitor sees the request,
  the current file and every block, as the guarded transport shows them.

Only the plain case is taken: a 200 from the Hub's own origin with a Content-Length and an identity-encoded
body. An error status is raised as huggingface_hub raises it (same class and message, from the same answer).
Anything else (a redirect, a chunked or compressed body, an answer that does not parse, a connection that
cannot be made, a proxy in the environment) comes back as None before a byte is written, and hub_batch sends
that file through huggingface_hub's client as before: its redirects, retries and errors stay the reference."""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import threading
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

from models_app.services import hub_guard
from models_app.services.errors import DownloadError
from models_app.services.hub_progress import READ_BYTES, JobMonitor

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # as huggingface_hub's client under the guard (hub_progress.install_http_guard)
ERROR_BODY_MAX = 64 * 1024  # of an error answer, for its message
MAX_LINE = 64 * 1024  # a status or header line (http.client's limit)
MAX_HEADERS = 100  # (http.client's limit)
_BODY_HEADERS = {"content-length", "content-encoding", "transfer-encoding"}


class _Unusable(Exception):
    """An answer this path does not read (or none came): huggingface_hub's client takes the file."""


class _WatchedReader(io.RawIOBase):
    """A connection's socket (plain or TLS) read in READ_SLICE pieces under the thread's Watch
    (hub_guard.watched_read): the header deadline, the caller's deadline, the job's cancel, and the stall
    timeout between bytes. A piece that times out has read nothing, so retrying it loses no byte."""

    def __init__(self, sock: socket.socket, stall: float) -> None:
        self._sock = sock
        self._stall = stall

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        sock = self._sock

        def read(_max_bytes: int, timeout: float | None) -> int:
            sock.settimeout(timeout)
            try:
                return sock.recv_into(buffer)
            except TimeoutError:
                raise httpcore2.ReadTimeout("timed out") from None

        return hub_guard.watched_read(read, len(buffer), self._stall)


class _Answer:
    """An answer's status and headers (names lower-cased; a repeated header's values joined by commas)."""

    def __init__(self, status: int, headers: dict[str, str], items: list[tuple[str, str]], keep_alive: bool):
        self.status = status
        self.headers = headers
        self.items = items
        self.keep_alive = keep_alive

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None


class _Connection:
    """One kept-alive HTTP/1.1 connection to the Hub's origin, used by one thread at a time."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, stall: float) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._stall = stall
        self._timeout = min(stall, CONNECT_TIMEOUT)
        self._sock: socket.socket | None = None
        self._reader: io.BufferedReader | None = None
        self.reused = False  # it carried an answer before: the server may have closed it meanwhile

    @property
    def open(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:  # the handshake under the connect timeout
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self._sock = sock
        self._reader = io.BufferedReader(_WatchedReader(sock, self._stall), READ_BYTES)
        self.reused = False

    def send(self, request: bytes) -> None:
        """Not watched: a few hundred bytes, under the connect timeout."""
        assert self._sock is not None
        self._sock.settimeout(self._timeout)
        self._sock.sendall(request)

    def answer(self) -> _Answer:
        """The status line and headers. _Unusable when the connection ends before a status line or the head
        does not parse."""
        assert self._reader is not None
        line = self._reader.readline(MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("the server closed the connection")
        version, _, rest = line.rstrip(b"\r\n").partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit() or len(line) > MAX_LINE:
            raise _Unusable(f"not an HTTP/1.x status line: {line[:80]!r}")
        headers: dict[str, str] = {}
        items: list[tuple[str, str]] = []
        while True:
            line = self._reader.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):
                break
            name, colon, value = line.partition(b":")
            if not colon or len(line) > MAX_LINE or len(items) >= MAX_HEADERS or name[:1] in (b" ", b"\t"):
                raise _Unusable("a header line that does not parse (or too many)")
            key, text = name.strip().decode("latin-1").lower(), value.strip().decode("latin-1")
            items.append((key, text))
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        connection = headers.get("connection", "").lower()
        keep_alive = version == b"HTTP/1.1" and "close" not in connection
        return _Answer(int(code), headers, items, keep_alive)

    def read1(self, size: int) -> bytes:
        assert self._reader is not None
        return self._reader.read1(size)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = self._reader = None


class DirectClient:
    """Kept-alive connections to the Hub's origin, one per thread that asks."""

    def __init__(self, endpoint: str, headers: dict[str, str], *, stall: float) -> None:
        parts = urlsplit(endpoint)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        default_port = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = host if self.port == default_port else f"{host}:{self.port}"
        # No Accept-Encoding: the body comes as stored, and is hashed as it is written.
        self._headers = "".join(
            f"{k}: {v}\r\n"
            for k, v in headers.items()
            if k.lower() not in ("accept-encoding", "host", "connection", "content-length")
        )
        self.stall = stall
        self._tls: ssl.SSLContext | None = None
        if self.scheme == "https":
            # The trust huggingface_hub's client has: httpx2's default context (the system's certificates,
            # truststore on macOS and Windows, or the environment's SSL_CERT_FILE / SSL_CERT_DIR).
            self._tls = httpx2.create_ssl_context()
        self._local = threading.local()
        # Once an LFS file was redirected (a Hub that sends LFS to its CDN) the others will be too: they go
        # straight to huggingface_hub's client instead of asking here first.
        self._lfs_elsewhere = False
        self._all: list[_Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def for_endpoint(cls, endpoint: str, headers: dict[str, str], *, stall: float) -> DirectClient | None:
        """None where this path would not go the way huggingface_hub's client goes: a proxy for the
        endpoint in the environment (httpx2 honours it), a scheme other than http(s), or a header (a token)
        with a line break in it."""
        parts = urlsplit(endpoint)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            return None
        proxies = urllib.request.getproxies()
        if (proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(parts.hostname):
            return None
        if any(c in text for item in headers.items() for text in item for c in "\r\n"):
            return None  # written out here as they are: httpx2 refuses such a header, so it decides
        return cls(endpoint, headers, stall=stall)

    def _connection(self) -> _Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = _Connection(self.host, self.port, tls=self._tls, stall=self.stall)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()

    def get(self, url: str, monitor: JobMonitor, *, lfs: bool = False) -> Body | None:
        """The 200 answer to GET url, its headers checked; None (nothing read of a body) for anything
        else, which the caller sends through huggingface_hub's client instead. An error status raises what
        huggingface_hub raises for it. `lfs`: an LFS file, not asked here once another was redirected."""
        if lfs and self._lfs_elsewhere:
            return None
        parts = urlsplit(url)
        if (parts.scheme.lower(), parts.hostname, parts.port or self.port) != (
            self.scheme,
            self.host,
            self.port,
        ):
            return None
        if not hub_guard.redirect_allowed(url):
            raise hub_guard.refused_host(url)
        connection = self._connection()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = f"GET {target} HTTP/1.1\r\nHost: {self._host_header}\r\n{self._headers}\r\n".encode(
            "latin-1"
        )
        monitor.on_request()
        name = monitor.file_started(parts.path, "GET")
        watch = hub_guard.Watch(check=monitor.check, whole_answer=False)
        try:
            with hub_guard.watching(watch):
                answer = self._exchange(connection, request, watch)
        except DownloadError as exc:  # a deadline: as the guarded transport, the job's other transfers stop
            connection.close()
            monitor.file_ended(name)
            monitor.abort(exc)
            raise
        except (OSError, _Unusable) as exc:
            log.debug("direct GET %s: %s; through huggingface_hub's client instead", url, exc)
            connection.close()
            monitor.file_ended(name)
            return None
        except BaseException:
            connection.close()
            monitor.file_ended(name)
            raise
        watch.headers_received()
        body = Body(connection, answer, watch, monitor, name)
        try:
            self._check(url, body, lfs=lfs)
        except _Unusable:
            body.close()  # its body is not read: the connection goes
            return None
        except DownloadError as exc:
            body.close()
            monitor.abort(exc)  # as the guarded transport does: the job's other transfers stop too
            raise
        except BaseException:
            body.close()
            raise
        monitor.on_activity()
        return body

    def _check(self, url: str, body: Body, *, lfs: bool) -> None:
        """Raises what huggingface_hub raises for an error status, _Unusable for any answer but a plain 200
        (remembering an LFS file's redirect), the guard's DownloadError for headers it refuses."""
        answer = body.answer
        if answer.status >= 400:
            _raise_status(url, body)
        plain = answer.status == 200 and "transfer-encoding" not in answer.headers
        encoding = answer.headers.get("content-encoding", "identity").lower()
        if not plain or answer.length is None or encoding != "identity":
            if lfs and 300 <= answer.status < 400:
                self._lfs_elsewhere = True
            raise _Unusable(f"HTTP {answer.status}")
        hub_guard.check_response_headers("GET", answer.headers, status=200, url=url)

    def _exchange(self, connection: _Connection, request: bytes, watch: hub_guard.Watch) -> _Answer:
        """Send the request and read the answer's head, on a new connection once more if the kept-alive one
        turns out closed before any of the answer came (the server's idle timeout)."""
        for attempt in range(2):
            watch.check()
            if not connection.open:
                connection.connect()
            retry = connection.reused and attempt == 0
            try:
                connection.send(request)
                answer = connection.answer()
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                connection.close()
                if retry:
                    continue
                raise
            connection.reused = True
            return answer
        raise AssertionError("unreachable")


def _raise_status(url: str, body: Body) -> None:
    """An error answer raised as huggingface_hub raises it from its own client's answer (its error class,
    code and message come from the status, the X-Error-* headers and the body): the same error, not the
    same request sent twice (a 429 or a 5xx is retried by the attempt's backoff, as before)."""
    from huggingface_hub.utils import hf_raise_for_status

    answer = body.answer
    content = b""
    if answer.length is not None and "transfer-encoding" not in answer.headers:
        try:
            while len(content) < min(answer.length, ERROR_BODY_MAX) and (block := body.read(ERROR_BODY_MAX)):
                content += block
        except (httpx2.TransportError, httpcore2.ReadTimeout):
            pass  # the status says enough
    response = httpx2.Response(
        answer.status,
        # The body as read (not decoded, maybe cut short): only the headers that describe it go.
        headers=[(k, v) for k, v in answer.items if k not in _BODY_HEADERS],
        content=content[:ERROR_BODY_MAX],
        request=httpx2.Request("GET", url),
    )
    hf_raise_for_status(response)
    raise httpx2.HTTPStatusError(f"HTTP {answer.status}", request=response.request, response=response)


class Body:
    """A 200 answer's body, read block by block under the request's Watch, to its Content-Length."""

    def __init__(
        self, connection: _Connection, answer: _Answer, watch: hub_guard.Watch, monitor: JobMonitor, name: str
    ) -> None:
        self._connection = connection
        self.answer = answer
        self._left = answer.length or 0
        self._watch = watch
        self._monitor = monitor
        self._name = name

    def read(self, size: int) -> bytes:
        """Up to size bytes, as they come (b"" at the end). A connection lost mid-body raises what
        huggingface_hub's client raises for it (httpx2's transport errors: errors.classify knows them)."""
        if self._left <= 0:
            return b""
        try:
            with hub_guard.watching(self._watch):
                block = self._connection.read1(min(size, self._left))
        except OSError as exc:
            raise httpx2.ReadError(str(exc) or type(exc).__name__) from exc
        if not block:
            raise httpx2.RemoteProtocolError(
                f"peer closed connection without sending complete body ({self._left} bytes left)"
            )
        self._left -= len(block)
        self._monitor.on_activity()
        return block

    def close(self) -> None:
        # Read to its end: the connection carries this thread's next request; anything less cannot.
        if self._left > 0 or not self.answer.keep_alive or self.answer.length is None:
            self._connection.close()
        self._monitor.file_ended(self._name)
