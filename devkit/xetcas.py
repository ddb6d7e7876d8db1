"""The local Hub's Xet CAS served over HTTP, as the real Hub's CAS server serves it (HUB_PROTOCOL.md §9).

hf_xet builds the storage (`hf_xet.upload_files(..., "local:///dir")`: shards and xorb files on disk); this module
reads it and answers what hf_xet's remote client asks when it downloads (xet-core, cas_client/remote_client.rs):

- `GET <cas>/v1/reconstructions/<file hash>` (and `/v2/`, which hf_xet tries first), with the file's byte range in
  a `Range` header: the file's terms (xorb hash, chunk range, unpacked length) and, per xorb, URLs with the byte
  ranges that hold those chunks. Read from the shards' file-info sections and the xorbs' chunk headers.
- `GET <url>` with `Range: bytes=a-b`: those bytes of the xorb file. The local CAS stores each xorb as it is
  serialized for the remote store (chunk headers and compressed chunks, then the footer), so the bytes are served
  as they are on disk.

Unlike the local CAS (one database that admits one process at a time), any number of processes can download at
once. Each xorb response is recorded (`XorbResponse`): bytes sent, and whether it completed or the client closed
it first. Xorbs can be throttled (one rate shared by every response, whatever hf_xet's concurrency) or stalled
(headers, then nothing), so a test can see a transfer stop from the server's side.
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

# A shard's header: 32-byte tag, version, footer size. The footer starts with its version, then the file-info offset.
_SHARD_HEADER = struct.Struct("<32sQQ")
_ENTRY = 48  # every file-info record (header, segment, verification, metadata ext) is 48 bytes
_FLAG_VERIFICATION = 1 << 31
_FLAG_METADATA_EXT = 1 << 30
_BOOKEND = b"\xff" * 32
_CHUNK_HEADER = (
    8  # version, compressed length (3 bytes LE), compression scheme, uncompressed length (3 bytes LE)
)
_XORB_FOOTER_IDENT = b"XETBLOB"
# Throttled writes: about 20 a second, so a client that closes is seen at the next one.
_TICK = 0.05


def merkle_hex(raw: bytes) -> str:
    """xet-core's hex spelling of a 32-byte hash: four little-endian u64s, each printed as 16 hex digits."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


class Segment(NamedTuple):
    """One term of a file: chunks [chunk_start, chunk_end) of a xorb, `unpacked` bytes once decompressed."""

    xorb: str
    chunk_start: int
    chunk_end: int
    unpacked: int


class XorbLayout(NamedTuple):
    """Where each chunk lies in a xorb file: `offsets[i]` is chunk i's first byte (offsets[-1] ends the last), and
    `sizes[i]` its unpacked length."""

    offsets: list[int]
    sizes: list[int]


def read_shard(path: Path) -> dict[str, list[Segment]]:
    """The files a shard describes: file hash -> its segments, in order (mdb_shard's file-info section)."""
    data = path.read_bytes()
    _, _, footer_size = _SHARD_HEADER.unpack_from(data)
    (file_info_offset,) = struct.unpack_from("<Q", data, len(data) - footer_size + 8)
    files: dict[str, list[Segment]] = {}
    pos = file_info_offset
    while (file_hash := data[pos : pos + 32]) != _BOOKEND:
        flags, count = struct.unpack_from("<II", data, pos + 32)
        pos += _ENTRY
        segments = []
        for _ in range(count):
            _, unpacked, start, end = struct.unpack_from("<IIII", data, pos + 32)
            segments.append(Segment(merkle_hex(data[pos : pos + 32]), start, end, unpacked))
            pos += _ENTRY
        pos += _ENTRY * count if flags & _FLAG_VERIFICATION else 0
        pos += _ENTRY if flags & _FLAG_METADATA_EXT else 0
        files[merkle_hex(file_hash)] = segments
    return files


def read_xorb_layout(path: Path) -> XorbLayout:
    """Walk the chunk headers of a serialized xorb up to its footer."""
    offsets, sizes = [0], []
    with open(path, "rb") as f:
        while len(header := f.read(_CHUNK_HEADER)) == _CHUNK_HEADER and not header.startswith(
            _XORB_FOOTER_IDENT
        ):
            compressed = int.from_bytes(header[1:4], "little")
            sizes.append(int.from_bytes(header[5:8], "little"))
            offsets.append(offsets[-1] + _CHUNK_HEADER + compressed)
            f.seek(offsets[-1])
    return XorbLayout(offsets, sizes)


@dataclass
class XorbResponse:
    """One ranged GET of a xorb, as the server saw it. `state`: open, complete, cut (the client closed first)
    or stopped (the hub stopped)."""

    xorb: str
    start: int
    end: int  # inclusive, as in the Range header
    sent: int = 0
    state: str = "open"

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class _Throttle:
    """One rate for every throttled response: each write books its share of time after the previous one."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def book(self, n: int) -> float:
        """The monotonic time at which `n` more bytes may go out."""
        with self._lock:
            at = max(time.monotonic(), self._next)
            self._next = at + n / self.rate
            return at


@dataclass
class XetCas:
    """The CAS of one local Hub: reads `cas_dir` (what `hf_xet.upload_files` wrote), serves it, records it."""

    cas_dir: Path
    stopping: threading.Event
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _files: dict[str, list[Segment]] = field(default_factory=dict)
    _layouts: dict[str, XorbLayout] = field(default_factory=dict)
    _tokens: set[str] = field(default_factory=set)
    _throttle: _Throttle | None = None
    _throttled: frozenset[str] | None = None  # None: every xorb
    _stalled: frozenset[str] | None = frozenset()  # None: every xorb
    responses: list[XorbResponse] = field(default_factory=list)

    @property
    def store_dir(self) -> Path:
        return self.cas_dir / "xet" / "xorbs"

    def xorb_path(self, xorb: str) -> Path:
        return self.store_dir / "xorbs" / f"default.{xorb}"

    # -- what the store holds

    def reload(self) -> None:
        """Re-read the shards (after an upload: hf_xet may also merge them into new files)."""
        files: dict[str, list[Segment]] = {}
        for shard in sorted((self.store_dir / "shards").glob("*.mdb")):
            files.update(read_shard(shard))
        with self._lock:
            self._files = files

    def segments(self, file_hash: str) -> list[Segment] | None:
        with self._lock:
            return self._files.get(file_hash)

    def layout(self, xorb: str) -> XorbLayout:
        with self._lock:
            layout = self._layouts.get(xorb)
        if layout is None:
            layout = read_xorb_layout(self.xorb_path(xorb))
            with self._lock:
                self._layouts[xorb] = layout
        return layout

    def xorbs_of(self, file_hash: str) -> set[str]:
        return {s.xorb for s in self.segments(file_hash) or []}

    def file_byte_ranges(self, file_hash: str) -> dict[str, list[tuple[int, int]]]:
        """Per xorb, the byte ranges [start, end) of the xorb file that hold this file's chunks."""
        ranges: dict[str, list[tuple[int, int]]] = {}
        for s in self.segments(file_hash) or []:
            offsets = self.layout(s.xorb).offsets
            ranges.setdefault(s.xorb, []).append((offsets[s.chunk_start], offsets[s.chunk_end]))
        return ranges

    # -- the reconstruction API

    def issue_token(self, token: str) -> None:
        with self._lock:
            self._tokens.add(token)

    def authorized(self, authorization: str | None) -> bool:
        token = (authorization or "").removeprefix("Bearer ").strip()
        with self._lock:
            return token in self._tokens

    def reconstruction(
        self, file_hash: str, first: int, last: int | None, xorb_url: str, version: int
    ) -> dict[str, Any] | None:
        """The terms covering file bytes [first, last] (last=None: to the end) and where to fetch them; None when
        `first` is past the end (the server answers 416, which hf_xet reads as "nothing more")."""
        segments = self.segments(file_hash)
        if segments is None:
            raise KeyError(file_hash)
        terms: list[dict[str, Any]] = []
        fetch: dict[str, list[tuple[int, int, int, int]]] = {}  # xorb -> chunk range, byte range (inclusive)
        offset_into_first = 0
        pos = 0  # file offset of the chunk being looked at
        for s in segments:
            layout = self.layout(s.xorb)
            chunk_start = chunk_end = None
            for i in range(s.chunk_start, s.chunk_end):
                size = layout.sizes[i]
                if pos + size > first and (last is None or pos <= last):
                    if chunk_start is None:
                        chunk_start = i
                        if not terms:
                            offset_into_first = first - pos
                    chunk_end = i + 1
                pos += size
            if chunk_start is None or chunk_end is None:
                continue
            unpacked = sum(layout.sizes[chunk_start:chunk_end])
            terms.append(
                {
                    "hash": s.xorb,
                    "unpacked_length": unpacked,
                    "range": {"start": chunk_start, "end": chunk_end},
                }
            )
            entry = (chunk_start, chunk_end, layout.offsets[chunk_start], layout.offsets[chunk_end] - 1)
            if entry not in fetch.setdefault(s.xorb, []):
                fetch[s.xorb].append(entry)
        if not terms:
            return None
        answer: dict[str, Any] = {"offset_into_first_range": offset_into_first, "terms": terms}
        url = xorb_url.rstrip("/") + "/"
        if version == 1:
            answer["fetch_info"] = {
                xorb: [
                    {
                        "range": {"start": cs, "end": ce},
                        "url": url + xorb,
                        "url_range": {"start": bs, "end": be},
                    }
                    for cs, ce, bs, be in entries
                ]
                for xorb, entries in fetch.items()
            }
        else:
            answer["xorbs"] = {
                xorb: [
                    {
                        "url": url + xorb,
                        "ranges": [
                            {"chunks": {"start": cs, "end": ce}, "bytes": {"start": bs, "end": be}}
                            for cs, ce, bs, be in entries
                        ],
                    }
                ]
                for xorb, entries in fetch.items()
            }
        return answer

    # -- faults

    def throttle(self, bytes_per_second: float, xorbs: Iterable[str] | None = None) -> None:
        with self._lock:
            self._throttle = _Throttle(bytes_per_second)
            self._throttled = None if xorbs is None else frozenset(xorbs)

    def stall(self, xorbs: Iterable[str] | None = None) -> None:
        with self._lock:
            self._stalled = None if xorbs is None else frozenset(xorbs)

    def release(self) -> None:
        """No more throttle or stall: responses waiting on either go on at full speed."""
        with self._lock:
            self._throttle, self._throttled, self._stalled = None, None, frozenset()

    def _mode(self, xorb: str) -> tuple[bool, _Throttle | None]:
        with self._lock:
            stalled = self._stalled is None or xorb in self._stalled
            throttled = self._throttle is not None and (self._throttled is None or xorb in self._throttled)
            return stalled, self._throttle if throttled else None

    # -- what was sent

    def xorb_responses(self, xorbs: Iterable[str] | None = None) -> list[XorbResponse]:
        wanted = None if xorbs is None else set(xorbs)
        with self._lock:
            return [r for r in self.responses if wanted is None or r.xorb in wanted]

    def bytes_sent(self, file_hash: str) -> int:
        """Xorb bytes sent that belong to this file (a xorb may also hold chunks of other files)."""
        ranges = self.file_byte_ranges(file_hash)
        total = 0
        for r in self.xorb_responses(ranges):
            sent_end = r.start + r.sent  # exclusive
            total += sum(max(0, min(sent_end, end) - max(r.start, start)) for start, end in ranges[r.xorb])
        return total

    # -- serving a xorb range

    def serve_xorb(
        self, connection: socket.socket, write: Callable[[bytes], object], xorb: str, start: int, end: int
    ) -> XorbResponse:
        """Send xorb bytes [start, end] (the headers are out already) through `write`, as throttle and stall allow,
        until done, the client closes, or the hub stops."""
        response = XorbResponse(xorb, start, end)
        with self._lock:
            self.responses.append(response)
        try:
            with open(self.xorb_path(xorb), "rb") as f:
                while response.sent < response.length:
                    if self.stopping.is_set():
                        response.state = "stopped"
                        return response
                    stalled, throttle = self._mode(xorb)
                    if (stalled or throttle) and _client_closed(connection):
                        response.state = "cut"
                        return response
                    if stalled:
                        self.stopping.wait(_TICK)
                        continue
                    n = min(response.length - response.sent, 8 << 20)
                    if throttle is not None:
                        n = min(n, max(1, int(throttle.rate * _TICK)))
                        if not self._wait_until(throttle.book(n), xorb, throttle):
                            continue  # released, stopped or changed meanwhile: look again
                    data = os.pread(f.fileno(), n, start + response.sent)
                    if not data:
                        raise OSError(f"xorb {xorb} is shorter than {end + 1} bytes")
                    write(data)
                    response.sent += len(data)
            response.state = "complete"
        except (BrokenPipeError, ConnectionResetError):
            response.state = "cut"
        return response

    def _wait_until(self, at: float, xorb: str, throttle: _Throttle) -> bool:
        """Sleep until `at` in ticks; False as soon as the throttle is no longer this one (or the hub stops)."""
        while (delay := at - time.monotonic()) > 0:
            if self.stopping.wait(min(delay, _TICK)) or self._mode(xorb)[1] is not throttle:
                return False
        return True


def _client_closed(connection: socket.socket) -> bool:
    """An HTTP client sends nothing while it reads a response: the socket turns readable only when it closes."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        if not readable:
            return False
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset by the peer
        return True


def parse_reconstruction_path(path: str) -> tuple[int, str] | None:
    """`/v1/reconstructions/<hash>` -> (1, hash); None when it is not one."""
    m = re.fullmatch(r"/v([12])/reconstructions/([0-9a-f]{64})", path)
    return (int(m[1]), m[2]) if m else None
