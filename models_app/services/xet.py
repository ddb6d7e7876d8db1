"""Xet transfers under the job's control (DESIGN.md "Downloads" 6, HUB_PROTOCOL.md §9).

A file whose HEAD carries `X-Xet-Hash` is fetched by hf_xet's Rust client, which never passes through the HTTP
guard of hub_progress and only prints an exception raised from its progress callback. The ways to stop it,
read in hf_xet 1.8 / huggingface_hub 2.4:
- `XetFileDownloadGroup.abort()`: the `wait_to_finish` that huggingface_hub's `xet_get` blocks in raises
  "User cancelled" at once, and huggingface_hub deletes its temp file, but the group's range requests in flight
  go on to their end: from the local Hub's throttled HTTP CAS, still reading 15 s later, until the process
  exited (measured; tests/downloads/test_xet.py). A cancelled pull went on using the network, a stalled one kept
  its connections waiting.
- `abort_xet_session()` (`XetSession.sigint_abort`): tears down the process-wide runtime, every transfer of the
  process with it, within a second (the same CAS saw every connection closed); huggingface_hub opens a new
  session on the next download.
- a child process per transfer: stops anything, but its progress, errors and the file name must be piped back,
  and a killed child can leave hf_xet's local state half-written.
We take the first two: `install_xet_guard()` wraps huggingface_hub's session getter so each download group it
opens belongs to the job whose repo its token route names; while huggingface_hub waits for the group, we watch
it, and as soon as the job's monitor holds an abort (cancel, time limit, lost job) or no byte has arrived for
DOWNLOAD_STALL_TIMEOUT, we abort the group and, when no other job's transfer is open in this process, the
session (a prefork downloads worker runs one job per process: always). Another job's transfers are never torn
down: with one open, the aborted group's requests in flight run out in the background. hf_xet's errors become
ours (disk full, network).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from models_app.services import hub_digest
from models_app.services.errors import NETWORK, DownloadError
from models_app.services.hub_progress import JobMonitor, monitor_for

log = logging.getLogger(__name__)

POLL = 0.05  # watch period: how late at most an abort reaches hf_xet
ABORT_GRACE = 0.5  # how long an aborted group may take to end before the job stops waiting for it
_installed = False
_install_lock = threading.Lock()
# hf_xet spells the OS error in its message: "No space left on device (os error 28)".
_DISK_FULL_MARKERS = ("os error 28", "no space left on device", "os error 122", "disk quota exceeded")


class _OpenGroups:
    """Download groups open in this process, by job (None: a download that no job watches): the session may be
    torn down for a job only while every open group is that job's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: list[int | None] = []

    def add(self, owner: int | None) -> None:
        with self._lock:
            self._owners.append(owner)

    def remove(self, owner: int | None) -> None:
        with self._lock:
            self._owners.remove(owner)

    def only(self, owner: int) -> bool:
        with self._lock:
            return all(o == owner for o in self._owners)


_open_groups = _OpenGroups()


def _abort_session_for(job_id: int) -> None:
    """Stop the job's Xet transfers in flight: only the process's session can (see the module docstring)."""
    if not _open_groups.only(job_id):
        log.info("download job %s: another job's Xet transfer is open; its aborted requests run out", job_id)
        return
    from huggingface_hub.utils._xet import abort_xet_session

    log.info("download job %s: tearing down this process's Xet session", job_id)
    abort_xet_session()


class _GuardedGroup:
    """A `XetFileDownloadGroup` whose transfers the job's monitor can stop."""

    def __init__(self, group: Any, monitor: JobMonitor) -> None:
        self._group = group
        self._monitor = monitor
        self._names: list[str] = []
        self._hashers: list[hub_digest.GrowingFileHasher] = []

    def __enter__(self) -> _GuardedGroup:
        self._group.__enter__()
        _open_groups.add(self._monitor.job_id)
        return self

    def start_download_file(self, file_info: Any, dest_path: str) -> Any:
        self._monitor.check()
        # huggingface_hub downloads to blobs/<etag>.<8 hex>.incomplete: the etag names the repo file.
        name = self._monitor.transfer_started(Path(dest_path).name.split(".", 1)[0])
        if name:
            self._names.append(name)
        # Hashed while hf_xet writes it, so that verification after the transfer has only the tail left.
        hasher = hub_digest.follow(Path(dest_path), int(getattr(file_info, "file_size", 0) or 0))
        if hasher is not None:
            self._hashers.append(hasher)
        try:
            return self._group.start_download_file(file_info, dest_path)
        except BaseException:
            if hasher is not None:
                hasher.cancel()
            raise

    def abort(self) -> None:
        self._group.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool | None:
        """Wait for the transfers (huggingface_hub enters the group, starts one file, exits) while watching
        the job; see `_wait`. The files' hashers finish only for a transfer that ended well; any other end
        stops them, recording nothing."""
        ended_well = False
        try:
            self._finish(exc_type, exc, tb)
            ended_well = exc is None
        finally:
            for hasher in self._hashers:
                if ended_well:
                    hasher.transfer_ended()
                else:
                    hasher.cancel()
        return None

    def _finish(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        outcome: list[BaseException] = []
        finished = threading.Event()

        def finish() -> None:
            try:
                self._group.__exit__(exc_type, exc, tb)
            except BaseException as error:
                outcome.append(error)
            finally:
                finished.set()

        # The blocking wait runs in a thread of its own (it releases the GIL): this one keeps watching.
        threading.Thread(target=finish, name="xet-wait", daemon=True).start()
        try:
            self._wait(finished)
        finally:
            _open_groups.remove(self._monitor.job_id)
            for name in self._names:
                self._monitor.file_ended(name)
        if not finished.is_set():
            # Aborted, and hf_xet still finishing a block it had in flight (a local CAS read or a disk write
            # cannot be interrupted; 10 s on a loaded machine, measured). Its bytes go to the temp file that
            # huggingface_hub deletes as this raises; the job need not wait for them.
            log.info("download job %s: not waiting for hf_xet's block in flight", self._monitor.job_id)
            raise self._monitor.aborted or DownloadError(NETWORK, "The Xet transfer was aborted.")
        if outcome:
            raise self._translate(outcome[0]) from outcome[0]
        if exc is None and (aborted := self._monitor.aborted) is not None:
            raise aborted  # the abort landed after the last byte: the job still ends as asked
        return None

    def _wait(self, finished: threading.Event) -> None:
        """Until the group finishes: bytes count as activity, DOWNLOAD_STALL_TIMEOUT without any is a stall;
        once the job's monitor holds an abort (cancel, stall, time limit, lost job), abort the group and
        give it ABORT_GRACE to end."""
        monitor = self._monitor
        last_bytes, last_change = -1, time.monotonic()
        aborted_at: float | None = None
        while not finished.wait(POLL):
            now = time.monotonic()
            if aborted_at is not None:
                if now - aborted_at > ABORT_GRACE:
                    return
                continue
            try:
                report = self._group.progress()
                moved = int(report.total_bytes_completed) + int(report.total_transfer_bytes_completed)
            except Exception:  # no report (yet): counts as no progress
                moved = last_bytes
            if moved != last_bytes:
                last_bytes, last_change = moved, now
                monitor.last_activity = now
                if moved > 0 and self._names:
                    # The file bytes are arriving for, rather than the oldest transfer still open: small files
                    # can wait behind a big one (a local CAS serves one group at a time).
                    monitor.current_file = self._names[0]
            elif now - last_change > monitor.stall_timeout and monitor.aborted is None:
                monitor.abort(
                    DownloadError(
                        NETWORK,
                        f"The Xet storage stopped sending data for more than {monitor.stall_timeout:.0f} s "
                        f"(DOWNLOAD_STALL_TIMEOUT) while downloading {monitor.repo_id}.",
                        repo_id=monitor.repo_id,
                    )
                )
            if monitor.aborted is not None:
                log.info("download job %s: stopping its Xet transfer", monitor.job_id)
                aborted_at = now
                try:
                    self._group.abort()
                except Exception as error:  # already finished
                    log.debug("xet abort: %s", error)
                _abort_session_for(monitor.job_id)

    def _translate(self, error: BaseException) -> BaseException:
        if (aborted := self._monitor.aborted) is not None:
            return aborted
        text = str(error).lower()
        if any(marker in text for marker in _DISK_FULL_MARKERS):
            return OSError(errno.ENOSPC, "No space left on device (Xet transfer)")
        if isinstance(error, Exception) and not isinstance(error, OSError):
            what = ", ".join(self._names) or "a file"
            return DownloadError(
                NETWORK,
                f"The Xet transfer of {what} from {self._monitor.repo_id} failed ({str(error)[:200]}).",
                repo_id=self._monitor.repo_id,
            )
        return error


class _CountedGroup:
    """A download group no job watches (a Hub call outside a pull): only counted while open, so that no job's
    abort tears down the session under it."""

    def __init__(self, group: Any) -> None:
        self._group = group

    def __enter__(self) -> _CountedGroup:
        self._group.__enter__()
        _open_groups.add(None)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._group, name)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool | None:
        try:
            return self._group.__exit__(exc_type, exc, tb)
        finally:
            _open_groups.remove(None)


class _GuardedSession:
    """Hands out guarded download groups; everything else is the real `XetSession`."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def new_file_download_group(self, **kwargs: Any) -> Any:
        route = str(kwargs.get("token_refresh_url") or "")
        monitor = monitor_for(urlsplit(route).path)
        group = self._session.new_file_download_group(**kwargs)
        return _CountedGroup(group) if monitor is None else _GuardedGroup(group, monitor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def install_xet_guard() -> None:
    """Once per process. huggingface_hub's `xet_get` imports `get_xet_session` from its module at call time,
    so replacing the module attribute reaches every download."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from huggingface_hub.utils import _xet

        original = _xet.get_xet_session

        def get_xet_session() -> Any:
            return _GuardedSession(original())

        _xet.get_xet_session = get_xet_session
        _installed = True
