"""Hashing a blob while huggingface_hub writes it, so verification need not read it back (issue 15 item 4).

Verification (hub_checks.verify_files) compares every file with the Hub's ids: sha256 for LFS files, git
blob sha1 for the others. Hashing after the transfer read every byte a second time (~1 s per GB here). Here
the digest is updated with each chunk as http_get writes it to its temporary file, and recorded against the
file itself once the transfer ends: its device, inode, size and mtime (ns). Verification takes the recorded
digest only while the blob on disk still has that identity; a blob written since (another process, a
repair, a resumed partial file not hashed from its first byte) has a different mtime or size and is hashed
again from disk. The digest is the same one verification would compute, of the same bytes, compared with the
same expected id: a corrupted byte from the Hub is caught exactly as before, only sooner.

Why at the file write, not in the HTTP transport: the transport sees the body as it came off the socket
(possibly content-encoded, possibly a retry that http_get rewinds over) and only the URL, which a redirect
changes; the file write sees exactly the bytes that land in the blob, in order, and the blob's name.
Xet transfers do not go through http_get: hf_xet reconstructs the file itself, from Rust. Its file writer
(xet-core's `SequentialWriter`, behind `reconstruct_to_file`) is one thread that appends the file's bytes in
order, from offset 0, to a file it creates and truncates: whatever lies below the file's size is final. So a
`GrowingFileHasher` follows the file as it grows, reading what is already there, and once the transfer ended
well only the tail remains to hash. Its digest is recorded like a HashingFile's, against the file's identity
after the last write; anything unexpected (the file shrinks, grows past its size, is replaced, the transfer
fails or is aborted) records nothing, and verification reads the blob from disk as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

# huggingface_hub's temporary file: blobs/<etag>.<8 hex>.incomplete. A 64-hex etag is an LFS sha256, a
# 40-hex one a git blob sha1 (HUB_PROTOCOL.md §3): the id verification checks the blob against.
_TEMP_NAME = re.compile(r"(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})\.[0-9a-f]{8}\.incomplete")
SHA256, GIT_SHA1 = "sha256", "git_sha1"
# Enough for any one pull's files (and a join's); the oldest are forgotten first.
MAX_RECORDS = 20_000


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_records: OrderedDict[tuple[int, int], tuple[_Identity, str, str]] = OrderedDict()
_lock = threading.Lock()


def _remember(identity: _Identity, kind: str, hexdigest: str) -> None:
    with _lock:
        key = (identity.device, identity.inode)
        _records.pop(key, None)
        _records[key] = (identity, kind, hexdigest)
        while len(_records) > MAX_RECORDS:
            _records.popitem(last=False)


def known_digest(path: Path, *, git_sha1: bool) -> str | None:
    """The digest recorded while `path` was written, if the file is still exactly what was written (same
    inode, size and mtime) and the recorded digest is the kind asked for; else None (hash it from disk)."""
    try:
        identity = _Identity.of(path.stat())
    except OSError:
        return None
    with _lock:
        record = _records.get((identity.device, identity.inode))
    if record is None:
        return None
    recorded, kind, hexdigest = record
    if recorded != identity or kind != (GIT_SHA1 if git_sha1 else SHA256):
        return None
    return hexdigest


def forget_all() -> None:
    with _lock:
        _records.clear()


def new_digest(kind: str, size: int) -> Any:
    return hashlib.sha1(b"blob %d\0" % size) if kind == GIT_SHA1 else hashlib.sha256()


def digest_kind(temp_name: str) -> str | None:
    """Which id a temporary file of huggingface_hub will be checked against, from the etag in its name."""
    match = _TEMP_NAME.fullmatch(temp_name)
    if match is None:
        return None
    return SHA256 if len(match["etag"]) == 64 else GIT_SHA1


class _Hasher:
    """A digest updated on its own thread: hashlib releases the GIL, so on a machine with a spare core the
    hashing of one chunk overlaps the receiving and writing of the next instead of adding to them (about
    1 s per GB of sha256 here). At most QUEUE chunks wait (a few MB)."""

    QUEUE = 16

    def __init__(self, digest: Any) -> None:
        self.digest = digest
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.QUEUE)
        self._thread = threading.Thread(target=self._run, name="blob-hasher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self.digest is None:
                continue  # keep draining: the writer must never block on a full queue
            try:
                self.digest.update(chunk)
            except Exception:  # never expected; the blob is then hashed from disk
                self.digest = None

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def finish(self) -> Any:
        """Wait for every queued chunk; the digest. Idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return self.digest


class _InlineHasher:
    """For a small file a thread costs more than the hashing it would move."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest

    def update(self, chunk: bytes) -> None:
        self.digest.update(chunk)

    def finish(self) -> Any:
        return self.digest


# From this size on, a blob is hashed on a thread of its own.
THREADED_FROM = 8 << 20


def _hasher(digest: Any, size: int) -> _Hasher | _InlineHasher:
    return _Hasher(digest) if size >= THREADED_FROM else _InlineHasher(digest)


class HashingFile:
    """The temporary file handed to http_get, hashing what is written to it. http_get only writes, tells,
    and, when a server ignores a Range, seeks back to where its transfer began and truncates: back to byte
    0 restarts the digest; anywhere else makes it unusable (the blob is then hashed from disk). `close_hasher`
    must follow, whatever happens (`record` does it)."""

    def __init__(self, file: IO[bytes], kind: str, size: int, *, digest: Any = None) -> None:
        self._file = file
        self._kind = kind
        self._size = size
        self._hasher = _hasher(digest if digest is not None else new_digest(kind, size), size)
        self._valid = True

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        if self._valid:
            if not isinstance(data, bytes):
                data = bytes(data)  # the hasher reads it later: it must not change meanwhile
            self._hasher.update(data if written is None or written == len(data) else data[:written])
        return written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        self._hasher.finish()
        if position == 0:
            self._hasher, self._valid = _hasher(new_digest(self._kind, self._size), self._size), True
        else:
            self._valid = False
        return position

    def truncate(self, size: int | None = None) -> int:
        return self._file.truncate(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close_hasher(self) -> None:
        self._hasher.finish()

    def record(self) -> None:
        """After the transfer: flush (so closing writes nothing more and the mtime stays) and remember the
        digest against the file's identity."""
        digest = self._hasher.finish()
        if not self._valid or digest is None:
            return
        self._file.flush()
        identity = _Identity.of(os.fstat(self._file.fileno()))
        if identity.size != self._file.tell():
            return  # something else writes this file too: trust nothing recorded here
        _remember(identity, self._kind, digest.hexdigest())


def hashing(temp_file: IO[bytes], expected_size: int | None) -> HashingFile | None:
    """A HashingFile for http_get's temporary file when it starts empty and verification will check it
    (its name says which id, and a git blob id needs the size up front); else None."""
    name = getattr(temp_file, "name", None)
    if not isinstance(name, str) or expected_size is None:
        return None
    kind = digest_kind(Path(name).name)
    if kind is None:
        return None
    try:
        if temp_file.tell() != 0:
            return None
    except (OSError, ValueError):
        return None
    return HashingFile(temp_file, kind, expected_size)


def hashing_resumed(file: IO[bytes], prefix: int, expected_size: int) -> HashingFile | None:
    """A HashingFile for a partial file a stopped download left, `file` positioned at its end (`prefix`
    bytes): the kept bytes are hashed from disk first (they were never seen by this process), then the
    transfer's bytes as they are written."""
    kind = digest_kind(Path(str(getattr(file, "name", ""))).name)
    if kind is None:
        return None
    digest = new_digest(kind, expected_size)
    offset = 0
    while offset < prefix:
        # pread: the writer's position stays where the transfer continues.
        chunk = os.pread(file.fileno(), min(8 << 20, prefix - offset), offset)
        if not chunk:
            return None  # shorter than it was a moment ago: not ours to trust
        digest.update(chunk)
        offset += len(chunk)
    return HashingFile(file, kind, expected_size, digest=digest)


# --- Following a file another writer appends to (Xet) -----------------------------------------------------

FOLLOW_POLL = 0.02  # seconds between two looks at a file that did not grow
FOLLOW_CHUNK = 8 << 20

_following: list[GrowingFileHasher] = []
_following_lock = threading.Lock()


class GrowingFileHasher:
    """Hashes, on a thread of its own, the file at `path` while hf_xet writes it (see the module docstring).
    The transfer's owner says how it ended: `transfer_ended()` (every byte is written; the digest is
    recorded once the last is hashed) or `cancel()` (nothing is recorded; the thread stops at its next
    chunk). `hashed` counts the bytes hashed so far."""

    def __init__(self, path: Path, kind: str, size: int) -> None:
        self.path = path
        self.kind = kind
        self.size = size
        self.hashed = 0
        self.key: tuple[int, int] | None = None  # (device, inode) once the file is open
        self.ended = threading.Event()  # the transfer succeeded: no byte more will be written
        self.cancelled = threading.Event()
        self.done = threading.Event()  # the thread is over, recorded or not
        self._wake = threading.Event()
        with _following_lock:
            _following.append(self)
        self._thread = threading.Thread(target=self._run, name="xet-hasher", daemon=True)
        self._thread.start()

    def transfer_ended(self) -> None:
        self.ended.set()
        self._wake.set()

    def cancel(self) -> None:
        self.cancelled.set()
        self._wake.set()

    def _run(self) -> None:
        try:
            fd = self._open()
            if fd is not None:
                try:
                    self._follow(fd)
                finally:
                    os.close(fd)
        except Exception:  # never expected (unreadable): nothing is recorded, the blob is hashed from disk
            log.warning("could not follow %s as hf_xet wrote it", self.path.name, exc_info=True)
        finally:
            with _following_lock:
                _following.remove(self)
            self.done.set()

    def _open(self) -> int | None:
        """The file, once hf_xet created it (it does so from its own runtime, after start_download_file)."""
        while not self.cancelled.is_set():
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                if self.ended.is_set():
                    return None  # already moved away: too late to follow
                self._wait()
                continue
            st = os.fstat(fd)
            self.key = (st.st_dev, st.st_ino)
            return fd
        return None

    def _wait(self) -> None:
        self._wake.wait(FOLLOW_POLL)
        self._wake.clear()

    def _follow(self, fd: int) -> None:
        digest = new_digest(self.kind, self.size)
        buffer = memoryview(bytearray(FOLLOW_CHUNK))
        while not self.cancelled.is_set():
            ended = self.ended.is_set()  # read before the size: a size read after it is the final one
            size = os.fstat(fd).st_size
            if size < self.hashed or size > self.size:
                return  # truncated or longer than the file: not the sequential writer we follow
            if size > self.hashed:
                n = os.preadv(fd, [buffer[: min(FOLLOW_CHUNK, size - self.hashed)]], self.hashed)
                if n <= 0:
                    return
                digest.update(buffer[:n])
                self.hashed += n
            elif ended:
                if self.hashed == self.size:
                    _remember(_Identity.of(os.fstat(fd)), self.kind, digest.hexdigest())
                return
            else:
                self._wait()


def follow(path: Path, size: int) -> GrowingFileHasher | None:
    """A GrowingFileHasher for a file hf_xet is about to write at `path` (huggingface_hub's temporary
    file, named after the id verification checks), or None: a small file (hashing it after costs less than
    the thread), a name that is not such a file, or a file already there (its old bytes are not the
    transfer's; huggingface_hub creates the file empty, under a name of its own, just before)."""
    kind = digest_kind(path.name)
    if kind is None or size < THREADED_FROM:
        return None
    try:
        if path.stat().st_size > 0:
            return None
    except FileNotFoundError:
        pass
    return GrowingFileHasher(path, kind, size)


def await_following(path: Path, check: Callable[[], None] = lambda: None) -> None:
    """Wait until no hasher that still follows the file at `path` (a transfer that ended well) is busy
    with it: its digest is then recorded. `check` runs between waits (cancel)."""
    try:
        st = path.stat()
    except OSError:
        return
    with _following_lock:
        busy = [h for h in _following if h.key == (st.st_dev, st.st_ino) and h.ended.is_set()]
    for hasher in busy:
        while not hasher.done.wait(FOLLOW_POLL):
            try:
                check()
            except BaseException:
                hasher.cancel()
                raise
