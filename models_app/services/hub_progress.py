"""Watching a running download: progress from huggingface_hub's progress bars, a heartbeat, cancel, stalls.

- `JobMonitor` holds one job's counters. A background thread publishes progress (at most ~5 messages a
  second), writes the row (at most once a second: bytes, speed, current file, heartbeat_at, even when no
  byte flows), and watches the cancel flag (Redis key, and the database flag through the heartbeat).
- `progress_bar_class(monitor)` is the `tqdm_class` given to snapshot_download. It renders nothing; it
  feeds the monitor and raises once the job must stop (HUB_PROTOCOL.md §7: aggregate "Downloading bytes",
  count files from "Fetching N files").
- `install_http_guard()` puts a thin wrapper around huggingface_hub's HTTP transport: every request and
  every block of a response body checks the monitor. A progress bar only ticks once per chunk, so this is
  what makes a cancel take effect within a fraction of a second, and what stops huggingface_hub's own
  retries (5 per file, 1 s apart) from stretching a stalled server far beyond DOWNLOAD_STALL_TIMEOUT.
  The same transport applies hub_guard's checks to every Hub call of the process (worker and web): answers
  that would become paths, redirect targets, header and total deadlines, and the metadata size cap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpcore2
import httpx2
from django.conf import settings
from django.db import close_old_connections, connection
from tqdm import tqdm

from models_app.realtime import download_progress, publish_download
from models_app.services import hub_guard, jobs
from models_app.services.errors import NETWORK, DownloadCancelled, DownloadError

log = logging.getLogger(__name__)

# Body chunk huggingface_hub writes and reports per progress update (its default, 10 MiB, makes progress
# jumpy on slow links). None: each chunk is what one socket read brought (<= READ_BYTES), as it came. Any
# size makes httpx's ByteChunker copy every byte twice more (into a BytesIO, then sliced out), with the GIL
# held: a 988 MB pull took ~15% more CPU and ~12% more time with 256 KiB chunks (dlsmall report).
CHUNK_SIZE: int | None = None
READ_BYTES = 1024 * 1024  # per socket read (see _WatchedNetworkStream.read)
TICK = 0.2  # watcher period: cancel polling and realtime messages (<= 5/s)
DB_WRITE_INTERVAL = 1.0  # <= 1 row write per second
EMA_ALPHA = 0.3


class JobLost(Exception):
    """The job is no longer ours (the reaper requeued it to another worker): stop without touching it."""


class JobMonitor:
    def __init__(
        self, *, job_id: int, task_id: str, repo_id: str, revision: str, owner_id: int | None
    ) -> None:
        self.job_id = job_id
        self.task_id = task_id
        self.repo_id = repo_id
        self.revision = revision
        self.owner_id = owner_id
        self._lock = threading.Lock()
        self.bytes_done = 0  # shown: the larger of the two below
        self._written = 0  # to disk, resumed bytes included
        self._received = 0  # from the network ("Downloading bytes"), ahead of _written during a Xet transfer
        self.bytes_resumed = 0  # part of bytes_done found on disk, not transferred: kept out of the speed
        self.bytes_total = 0
        self.files_done = 0
        self.files_total = 0
        self.current_file = ""
        self._inflight: list[str] = []
        self.etag_names: dict[str, str] = {}  # blob etag -> repo file, to name Xet transfers
        self.speed = 0.0
        self.downloading = False
        self.last_activity = time.monotonic()
        self.stall_timeout = float(settings.DOWNLOAD_STALL_TIMEOUT)
        self.deadline = time.monotonic() + float(settings.DOWNLOAD_TIME_LIMIT)
        self._abort: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called from download threads (cheap: no I/O)

    def check(self) -> None:
        if self._abort is not None:
            raise self._abort

    def abort(self, exc: BaseException) -> None:
        with self._lock:
            if self._abort is None:
                self._abort = exc

    @property
    def aborted(self) -> BaseException | None:
        return self._abort

    def clear_abort(self) -> None:
        """Forget a retryable abort (a stall) before the next attempt; a cancel or a lost job stays."""
        with self._lock:
            if isinstance(self._abort, DownloadError) and self._abort.retryable:
                self._abort = None
            self.downloading = False

    def on_bytes(self, n: float) -> None:
        """Bytes written to disk."""
        with self._lock:
            self._written = max(0, self._written + int(n))
            self._show_bytes()
        self.check()

    def on_received(self, n: float) -> None:
        """Bytes received from the network. Over HTTP they are written as they arrive; hf_xet writes a file
        only once a whole range of it is in (up to 64 MB), so between two writes only these move."""
        with self._lock:
            self._received = max(0, self._received + int(n))
            self._show_bytes()

    def on_resumed(self, n: int) -> None:
        """A transfer continues a partial file a stopped attempt left (hub_resume): its bytes count as done."""
        with self._lock:
            self._written += n
            self.bytes_resumed += n
            self._show_bytes()
        self.check()

    def _show_bytes(self) -> None:
        # Xet's network bytes are compressed and deduplicated, so they may never reach the total: the written
        # ones take over as they catch up (and finish at the total).
        self.bytes_done = max(self._written, self._received)

    def on_files(self, n: float) -> None:
        with self._lock:
            self.files_done += int(n)
        self.check()

    def on_request(self) -> None:
        """Before each HTTP request. A new request after DOWNLOAD_STALL_TIMEOUT without a byte is
        huggingface_hub retrying a stalled transfer: that is our network failure, not another retry."""
        self.check()
        now = time.monotonic()
        if self.downloading and now - self.last_activity > self.stall_timeout:
            self.stalled()

    def stalled(self) -> None:
        """A transfer got no byte for DOWNLOAD_STALL_TIMEOUT (its read timed out, or huggingface_hub retries
        one that did): the job's network failure, which stops its other transfers too. Raises."""
        self.abort(
            DownloadError(
                NETWORK,
                f"The Hub stopped sending data for more than {self.stall_timeout:.0f} s "
                f"(DOWNLOAD_STALL_TIMEOUT) while downloading {self.repo_id}.",
                repo_id=self.repo_id,
            )
        )
        self.check()

    def file_started(self, path: str, method: str) -> str:
        """The repo file a body GET fetches ("" for anything else); shown as the current file while it is
        the oldest transfer still running."""
        if method != "GET" or "/resolve/" not in path:
            return ""
        # /{repo}/resolve/{rev}/{path}: the rev is one segment (refs/pr/N is URL-encoded).
        rest = path.split("/resolve/", 1)[1].split("/", 1)
        name = unquote(rest[1])[:500] if len(rest) == 2 else ""
        if name:
            with self._lock:
                self._inflight.append(name)
                self.current_file = self._inflight[0]
        return name

    def transfer_started(self, etag: str) -> str:
        """A transfer that is no HTTP GET (Xet) began for the blob `etag`: its repo file ("" if unknown)
        becomes the current file like a GET's."""
        name = self.etag_names.get(etag, "")
        if name:
            with self._lock:
                self._inflight.append(name)
                self.current_file = self._inflight[0]
        return name

    def file_ended(self, name: str) -> None:
        with self._lock:
            if name in self._inflight:
                self._inflight.remove(name)
            if self._inflight:
                self.current_file = self._inflight[0]

    def on_activity(self) -> None:
        """Response headers or a block of body arrived."""
        self.last_activity = time.monotonic()
        self.check()

    def begin_download(self, *, bytes_total: int, files_total: int) -> None:
        with self._lock:
            self.bytes_total, self.files_total = bytes_total, files_total
            self.bytes_done = self._written = self._received = self.bytes_resumed = self.files_done = 0
            self.downloading = True
            self.last_activity = time.monotonic()

    def end_download(self) -> None:
        self.downloading = False

    # -- the watcher thread

    def start(self) -> JobMonitor:
        self._thread = threading.Thread(target=self._run, name=f"download-{self.job_id}", daemon=True)
        self._thread.start()
        _register(self)
        return self

    def stop(self) -> None:
        """Idempotent. Also ends the HTTP guard's view of this job."""
        _unregister(self)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def sleep(self, seconds: float) -> None:
        """Wait between attempts, waking up for a cancel."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check()
            time.sleep(min(TICK, max(0.0, end - time.monotonic())))
        self.check()

    def _run(self) -> None:
        last_write = last_bytes_at = time.monotonic()
        last_bytes = 0  # transferred, resumed bytes excluded
        published: tuple[int, int, str] | None = None
        try:
            while not self._stop.wait(TICK):
                now = time.monotonic()
                self._poll_cancel()
                if now > self.deadline:
                    self.abort(
                        DownloadError(
                            NETWORK,
                            f"The download took longer than DOWNLOAD_TIME_LIMIT ({settings.DOWNLOAD_TIME_LIMIT:.0f} s).",
                            retryable=False,
                            repo_id=self.repo_id,
                        )
                    )
                if now - last_bytes_at >= 0.5:
                    moved = self.bytes_done - self.bytes_resumed
                    rate = (moved - last_bytes) / (now - last_bytes_at)
                    self.speed = max(
                        0.0, rate if self.speed == 0 else EMA_ALPHA * rate + (1 - EMA_ALPHA) * self.speed
                    )
                    last_bytes, last_bytes_at = moved, now
                state = (self.bytes_done, self.files_done, self.current_file)
                if self.downloading and state != published:
                    self._publish()
                    published = state
                if now - last_write >= DB_WRITE_INTERVAL:
                    last_write = now
                    self._write()
        except Exception:  # the watcher must never die silently with the download running blind
            log.exception("download monitor for job %s failed", self.job_id)
        finally:
            connection.close()

    def _poll_cancel(self) -> None:
        try:
            if (message := jobs.cancel_requested(self.job_id)) is not None and self._abort is None:
                log.info("download job %s: cancel requested; stopping", self.job_id)
                self.abort(DownloadCancelled(message))
        except Exception as exc:  # Redis away: the database flag (checked by _write) still works
            log.debug("cancel flag check failed: %s", exc)

    def _write(self) -> None:
        close_old_connections()
        fields: dict[str, Any] = {"current_file": self.current_file, "speed_bps": round(self.speed, 1)}
        if self.downloading:
            fields.update(
                bytes_done=min(self.bytes_done, self.bytes_total) if self.bytes_total else self.bytes_done,
                files_done=self.files_done,
            )
        if jobs.heartbeat(self.job_id, task_id=self.task_id, **fields):
            return
        job = (
            jobs.DownloadJob.objects.filter(id=self.job_id)
            .only("state", "celery_task_id", "error_message")
            .first()
        )
        if job is not None and job.state == jobs.State.RUNNING and job.celery_task_id == self.task_id:
            self.abort(DownloadCancelled(job.error_message or "Cancelled."))  # the flag, read from the row
        else:
            self.abort(JobLost(f"job {self.job_id} was taken over"))

    def eta(self) -> float | None:
        if self.speed <= 0 or not self.bytes_total:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.speed)

    def _publish(self) -> None:
        payload = download_progress(
            job_id=self.job_id,
            repo_id=self.repo_id,
            revision=self.revision,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            files_done=self.files_done,
            files_total=self.files_total,
            current_file=self.current_file,
            speed_bps=self.speed,
            eta_seconds=self.eta(),
        )
        publish_download(payload, owner_id=self.owner_id)


# --- tqdm_class -------------------------------------------------------------------------------------------


_BARS = (("Reconstructing", "bytes"), ("Downloading bytes", "received"), ("Fetching", "files"))


class _JobProgressBar(tqdm):  # type: ignore[misc]
    job_monitor: JobMonitor  # not `monitor`: tqdm's own class attribute (its refresh thread)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        desc = str(kwargs.get("desc") or "")
        # snapshot_download's bars (HUB_PROTOCOL.md §7): bytes written ("Reconstructing"), bytes received
        # ("Downloading bytes"; over HTTP both tick alike, during a Xet transfer the written ones lag), files.
        self._kind = next((kind for prefix, kind in _BARS if desc.startswith(prefix)), "")
        kwargs["disable"] = True  # a worker has no terminal: render nothing, count in update()
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        n = n or 0
        self.n += n  # huggingface_hub reads .n to size its transfer bar
        if self._kind == "bytes":
            self.job_monitor.on_bytes(n)
        elif self._kind == "received":
            self.job_monitor.on_received(n)
        elif self._kind == "files":
            self.job_monitor.on_files(n)
        else:
            self.job_monitor.check()
        return None


def progress_bar_class(monitor: JobMonitor) -> type[tqdm]:
    return type("JobProgressBar", (_JobProgressBar,), {"job_monitor": monitor})


# --- The HTTP guard ---------------------------------------------------------------------------------------

_active: list[JobMonitor] = []
_active_lock = threading.Lock()
_installed: float | None = None  # the stall timeout the installed client was built with


def _register(monitor: JobMonitor) -> None:
    with _active_lock:
        _active.append(monitor)


def _unregister(monitor: JobMonitor) -> None:
    with _active_lock:
        if monitor in _active:
            _active.remove(monitor)


def note_resumed(path: str, n: int) -> None:
    """A request for `path` continues from byte n of a partial file already on disk (hub_resume)."""
    if (monitor := _monitor_for(path)) is not None:
        monitor.on_resumed(n)


def _monitor_for(path: str) -> JobMonitor | None:
    """The job a request belongs to: the one whose repo is in the URL path, else the only running one (an
    LFS body may come from a CDN URL that does not name the repo; a prefork worker runs one job at a time)."""
    with _active_lock:
        monitors = list(_active)
    for monitor in monitors:
        if f"/{monitor.repo_id}/" in path:
            return monitor
    return monitors[0] if len(monitors) == 1 else None


monitor_for = _monitor_for  # for the Xet guard (models_app/services/xet.py)


class _GuardedStream(httpx2.SyncByteStream):
    """A response body: read under its request's Watch (deadline, cancel), counted against the metadata cap
    when it is a metadata file, and reported to the job's monitor."""

    def __init__(
        self, stream: Any, monitor: JobMonitor | None, name: str, watch: hub_guard.Watch, metadata: str | None
    ) -> None:
        self._stream = stream
        self._monitor = monitor
        self._name = name
        self._watch = watch
        self._metadata = metadata

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        limit = int(settings.HUB_METADATA_MAX_BYTES)
        parts = iter(self._stream)
        while True:
            with hub_guard.watching(self._watch):
                part = next(parts, None)
            if part is None:
                return
            received += len(part)
            if self._metadata is not None and received > limit:
                raise hub_guard.too_big(self._metadata)
            if self._monitor is not None:
                self._monitor.on_activity()
            yield part

    def close(self) -> None:
        if self._name and self._monitor is not None:
            self._monitor.file_ended(self._name)
        self._stream.close()


class _WatchedNetworkStream(httpcore2.NetworkStream):
    """A connection whose reads wake up between slices for the request's deadlines and cancel."""

    def __init__(self, stream: httpcore2.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # httpcore asks for 64 KiB at a time; a body at wire speed fills more than that between two reads,
        # and each read is a syscall plus a trip through the deadline checks: take what is there, up to 1 MiB.
        return hub_guard.watched_read(self._stream.read, max(max_bytes, READ_BYTES), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        return _WatchedNetworkStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _WatchedBackend(httpcore2.SyncBackend):
    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore2.NetworkStream:
        return _WatchedNetworkStream(super().connect_tcp(*args, **kwargs))


class GuardedTransport(httpx2.HTTPTransport):
    """Every request huggingface_hub sends, worker and web alike: where it may go, how long its headers and
    body may take, what its answer may say (hub_guard), and, for a job, cancel and progress (its monitor)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # httpcore2 takes no backend through httpx2's transport: swap the pool's, before any connection.
        self._pool._network_backend = _WatchedBackend()  # type: ignore[attr-defined]

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        monitor = _monitor_for(request.url.path)
        try:
            return self._handle(request, monitor)
        except DownloadError as exc:
            if monitor is not None:
                monitor.abort(exc)  # the job's other transfers stop at their next read, not at their end
            raise

    def _handle(self, request: httpx2.Request, monitor: JobMonitor | None) -> httpx2.Response:
        url = str(request.url)
        if not hub_guard.redirect_allowed(url):
            raise hub_guard.refused_host(url)
        name = ""
        if monitor is not None:
            monitor.on_request()
            name = monitor.file_started(request.url.path, request.method)
        # A job's file bodies may take hours; every other answer (API JSON, a preview's config) is small.
        file_body = (
            monitor is not None and request.method == "GET" and not request.url.path.startswith("/api/")
        )
        watch = hub_guard.Watch(
            check=monitor.check if monitor is not None else None, whole_answer=not file_body
        )
        try:
            watch.check()  # a retry after the caller's deadline does not start
            with hub_guard.watching(watch):
                response = super().handle_request(request)
        except BaseException:
            if monitor is not None:
                monitor.file_ended(name)
            raise
        watch.headers_received()
        metadata = hub_guard.metadata_name() if request.method == "GET" else None
        try:
            hub_guard.check_response_headers(
                request.method, response.headers, status=response.status_code, url=str(request.url)
            )
            if metadata is not None and response.status_code in (200, 206):
                length = response.headers.get("content-length")
                hub_guard.check_metadata_size(metadata, int(length) if length and length.isdigit() else None)
            if monitor is not None:
                monitor.on_activity()
        except BaseException:
            response.close()
            if monitor is not None:
                monitor.file_ended(name)
            raise
        if (
            request.method == "GET"
            and response.status_code == 200
            and hub_guard.TREE_PATH_RE.match(request.url.path)
        ):
            return _checked_tree_listing(request, response, monitor, watch)
        response.stream = _GuardedStream(response.stream, monitor, name, watch, metadata)  # type: ignore[assignment]
        return response


def _checked_tree_listing(
    request: httpx2.Request, response: httpx2.Response, monitor: JobMonitor | None, watch: hub_guard.Watch
) -> httpx2.Response:
    """Read a tree listing here (bounded like a metadata file), check what will name files, and hand
    huggingface_hub the same bytes."""
    try:
        body = _GuardedStream(response.stream, monitor, "", watch, "tree listing")
        with contextlib.closing(body):
            raw = b"".join(body)
        # The raw bytes may be compressed: a throwaway response decodes them as the client will.
        decoded = httpx2.Response(200, headers=response.headers, content=raw).content
        entries = hub_guard.parse_metadata(decoded, "tree listing")
    except hub_guard.MetadataError as exc:
        raise DownloadError(
            NETWORK, f"Refused: {exc.reason.removeprefix('its ')}.", retryable=False
        ) from None
    except ValueError:
        entries = None  # not JSON: huggingface_hub fails on it by itself
    hub_guard.check_tree_listing(entries)
    return httpx2.Response(
        response.status_code,
        headers=response.headers,
        stream=httpx2.ByteStream(raw),
        extensions=response.extensions,
        request=request,
    )


def install_http_guard() -> None:
    """Once per process: route huggingface_hub's HTTP client through the guard, with the stall timeout as
    the client's default timeout (the tree listing call passes none) and as huggingface_hub's read
    timeouts (read at call time from `constants`, HUB_PROTOCOL.md §5). Every service that calls the Hub
    (downloads, the preview, update checks, token checks) calls this first."""
    global _installed
    from huggingface_hub import constants

    stall = float(settings.DOWNLOAD_STALL_TIMEOUT)
    constants.HF_HUB_DOWNLOAD_TIMEOUT = stall  # type: ignore[assignment]
    constants.HF_HUB_ETAG_TIMEOUT = stall  # type: ignore[assignment]
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK_SIZE  # type: ignore[assignment]
    if _installed == stall:
        return
    from huggingface_hub.utils import _http as hf_http

    def factory() -> httpx2.Client:
        return httpx2.Client(
            transport=GuardedTransport(),
            event_hooks={"request": [hf_http.hf_request_event_hook]},
            follow_redirects=True,
            timeout=httpx2.Timeout(stall, connect=min(stall, 10.0)),
        )

    hf_http.set_client_factory(factory)  # closes the current client; the next call builds ours
    _installed = stall


def uninstall_http_guard() -> None:
    """Back to huggingface_hub's own client (tests that talk to a Hub other than HF_ENDPOINT directly)."""
    global _installed
    if _installed is None:
        return
    from huggingface_hub.utils import _http as hf_http

    hf_http.set_client_factory(hf_http.default_client_factory)
    _installed = None
