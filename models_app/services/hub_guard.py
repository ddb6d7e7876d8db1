"""The Hub is not trusted (DESIGN.md, Downloads §10): a mirror, a proxy or a MITM on an http:// endpoint may
answer anything. huggingface_hub turns some answers into file names (an ETag names `blobs/<etag>`, a commit id
names `snapshots/<sha>` and the content of `refs/<revision>`), follows redirects anywhere, and waits on a
server for as long as each read returns a byte. Everything here is checked in the HTTP transport
(hub_progress.GuardedTransport), which sees every request and response before huggingface_hub acts on it:

- values that become paths or stored ids: commit ids (40 lowercase hex), ETags (40 or 64 lowercase hex; Xet
  hashes are 64), the Xet CAS URL;
- where a request may go: the endpoint's own origin, or an https host of HUB_REDIRECT_HOSTS on port 443;
- how long it may take: HUB_HEADER_TIMEOUT for the status line and headers of every answer, HUB_REQUEST_TIMEOUT
  for a whole answer (all but a download job's file bodies, which DOWNLOAD_STALL_TIMEOUT and
  DOWNLOAD_TIME_LIMIT bound), a caller's total deadline (the preview's HUB_PREVIEW_TIMEOUT), and a job's
  cancel, all checked between socket reads;
- how big a metadata file the product parses may be (HUB_METADATA_MAX_BYTES), counted while it downloads, and
  how deeply its JSON may nest when it is read (from the Hub or from the cache).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from django.conf import settings

from models_app.services.errors import INTEGRITY, NETWORK, DownloadError

COMMIT_RE = re.compile(r"[0-9a-f]{40}", re.ASCII)
ETAG_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}", re.ASCII)
XET_HASH_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
# Real configs nest 3-5 levels; the bound only has to keep every recursive reader (json, Django, templates)
# far from Python's recursion limit.
MAX_JSON_DEPTH = 64
# How often a blocked socket read wakes up to look at the deadlines and the cancel flag.
READ_SLICE = 0.25


# --- Values that become paths or stored ids ---------------------------------------------------------------------


def _shown(value: object) -> str:
    text = str(value)
    return repr(text[:80] + ("…" if len(text) > 80 else ""))


def invalid_answer(what: str, value: object, *, repo_id: str = "") -> DownloadError:
    where = f" for {repo_id}" if repo_id else ""
    return DownloadError(
        INTEGRITY,
        f"Refused: the Hub answered an invalid {what}{where} ({_shown(value)}); nothing was written.",
        action="Check HF_ENDPOINT: a Hub mirror or proxy that answers this cannot be trusted.",
        repo_id=repo_id,
    )


def check_commit(value: object, *, repo_id: str = "") -> str:
    """A commit id as the Hub must send it (model info `sha`, X-Repo-Commit): it names a snapshot folder."""
    if not isinstance(value, str) or not COMMIT_RE.fullmatch(value):
        raise invalid_answer("commit id", value, repo_id=repo_id)
    return value


def normalize_etag(value: str) -> str:
    """What huggingface_hub makes of an ETag header (file_download._normalize_etag): the blob's file name."""
    return value.lstrip("W/").strip('"')


def check_etag(value: object, *, repo_id: str = "") -> str:
    if not isinstance(value, str) or not ETAG_RE.fullmatch(value):
        raise invalid_answer("ETag", value, repo_id=repo_id)
    return value


def check_response_headers(
    method: str, headers: Mapping[str, str], *, status: int = 200, url: str = ""
) -> None:
    """The headers huggingface_hub turns into paths, checked on every answer before it reads them. A
    redirect within the same origin is followed and its headers ignored (the Hub sends its /resolve HEADs on
    to /api/resolve-cache/...): the hop it leads to is checked instead."""
    location = headers.get("location")
    if 300 <= status < 400 and location and _origin(urljoin(url, location)) == _origin(url):
        return
    commit = headers.get("x-repo-commit")
    if commit is not None:
        check_commit(commit)
    # A GET of a file at the Hub's own origin says the same as the HEAD that hub_tree spares (a CDN's answers
    # carry the CDN's own ETags: not checked).
    if method == "HEAD" or (
        method == "GET" and "/resolve/" in url and _origin(url) == _origin(settings.HF_ENDPOINT)
    ):
        # X-Linked-Etag wins over ETag in get_hf_file_metadata: check the one it will use.
        etag = headers.get("x-linked-etag") or headers.get("etag")
        if etag is not None:
            check_etag(normalize_etag(etag))
    xet_hash = headers.get("x-xet-hash")
    if xet_hash is not None and not XET_HASH_RE.fullmatch(xet_hash):
        raise invalid_answer("Xet hash", xet_hash)
    cas_url = headers.get("x-xet-cas-url")
    if cas_url is not None and not cas_allowed(cas_url):
        raise refused_host(cas_url, what="Xet storage URL")


# A tree listing (snapshot_download's file list): its paths name snapshot entries, and for Xet files
# huggingface_hub takes the blob name from `lfs.oid` without any HEAD (file_download's tree cache).
TREE_PATH_RE = re.compile(r"^/api/models/.+/tree/")


def check_tree_listing(entries: object) -> None:
    from models_app.services.validation import safe_relpath

    if not isinstance(entries, list):
        return  # not a listing huggingface_hub can read: it fails on its own, nothing gets named by it
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("type") != "file":
            continue
        safe_relpath(entry.get("path"))
        if "oid" in entry and not COMMIT_RE.fullmatch(str(entry["oid"])):
            raise invalid_answer("file id in a tree listing", entry["oid"])
        lfs = entry.get("lfs")
        if isinstance(lfs, dict) and "oid" in lfs and not XET_HASH_RE.fullmatch(str(lfs["oid"])):
            raise invalid_answer("LFS sha256 in a tree listing", lfs["oid"])
        if entry.get("xetHash") is not None and not XET_HASH_RE.fullmatch(str(entry["xetHash"])):
            raise invalid_answer("Xet hash in a tree listing", entry["xetHash"])


# --- Where requests may go ---------------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = -1
    return scheme, (parts.hostname or "").lower(), port


def _host_pattern(pattern: str) -> re.Pattern[str]:
    # "*" stands for part of one DNS label: cdn-lfs*.hf.co matches cdn-lfs-us-1.hf.co, never evil.co/.hf.co.
    return re.compile(".".join(re.escape(label).replace(r"\*", "[a-z0-9-]*") for label in pattern.split(".")))


def redirect_allowed(url: str) -> bool:
    """The endpoint's own origin, or https on port 443 to a host of HUB_REDIRECT_HOSTS (the CDN and Xet hosts
    the real Hub sends downloads to). Loopback and other ports of the endpoint's host are not."""
    origin = _origin(url)
    if origin == _origin(settings.HF_ENDPOINT):
        return True
    scheme, host, port = origin
    if scheme != "https" or port != 443 or not host:
        return False
    return any(_host_pattern(p.lower()).fullmatch(host) for p in settings.HUB_REDIRECT_HOSTS)


def cas_allowed(url: str) -> bool:
    """Where hf_xet may fetch Xet files: as redirects, or a local CAS directory when HUB_XET_LOCAL_CAS allows
    one (an offline mirror, the tests' local Hub)."""
    if url.startswith("local://"):
        return bool(settings.HUB_XET_LOCAL_CAS)
    return redirect_allowed(url)


def refused_host(url: str, *, what: str = "redirect") -> DownloadError:
    # The host only, never the port, and nothing is connected to: the answer cannot be used to scan ports.
    host = urlsplit(url).hostname or "?"
    return DownloadError(
        INTEGRITY,
        f"Refused: the Hub answered an invalid {what} (to {host[:100]}): only HF_ENDPOINT's own origin and "
        "https on port 443 to the hosts of HUB_REDIRECT_HOSTS are followed; nothing was downloaded.",
        action="If this Hub legitimately sends downloads there, add the host to HUB_REDIRECT_HOSTS.",
    )


# --- Deadlines and cancel, between socket reads ------------------------------------------------------------------


@dataclass
class CallDeadline:
    at: float
    seconds: float
    setting: str


_call_deadline: contextvars.ContextVar[CallDeadline | None] = contextvars.ContextVar(
    "hub_call_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float, setting: str) -> Iterator[None]:
    """Every Hub request made in this context (this thread) ends by then, whatever the server trickles."""
    token = _call_deadline.set(CallDeadline(time.monotonic() + seconds, seconds, setting))
    try:
        yield
    finally:
        _call_deadline.reset(token)


class Watch:
    """One request's limits, looked at between socket reads: its header deadline (until the headers are in),
    its whole-answer deadline (every answer but a job's file body), the caller's total deadline and the job's
    cancel (`check` raises the job's abort)."""

    def __init__(self, *, check: Callable[[], None] | None = None, whole_answer: bool = True) -> None:
        now = time.monotonic()
        self.header_timeout = float(settings.HUB_HEADER_TIMEOUT)
        self.header_deadline: float | None = now + self.header_timeout
        self.request_timeout = float(settings.HUB_REQUEST_TIMEOUT)
        self.request_deadline = now + self.request_timeout if whole_answer else None
        self.call = _call_deadline.get()
        self._check = check

    def headers_received(self) -> None:
        self.header_deadline = None

    def limit(self) -> float | None:
        bounds = [self.header_deadline, self.request_deadline, self.call.at if self.call else None]
        return min((b for b in bounds if b is not None), default=None)

    def check(self) -> None:
        if self._check is not None:
            self._check()
        now = time.monotonic()
        if self.call is not None and now >= self.call.at:
            raise DownloadError(
                NETWORK,
                f"The Hub did not answer within {self.call.seconds:.0f} s ({self.call.setting}).",
                retryable=False,
            )
        if self.header_deadline is not None and now >= self.header_deadline:
            raise DownloadError(
                NETWORK,
                f"The Hub took longer than {self.header_timeout:.0f} s (HUB_HEADER_TIMEOUT) to send the "
                "headers of an answer.",
            )
        if self.request_deadline is not None and now >= self.request_deadline:
            raise DownloadError(
                NETWORK,
                f"An answer from the Hub took longer than {self.request_timeout:.0f} s (HUB_REQUEST_TIMEOUT) "
                "to arrive.",
            )


_local = threading.local()
_Read = TypeVar("_Read")  # what a read returns: bytes, or a count read into a buffer


def current_watch() -> Watch | None:
    return getattr(_local, "watch", None)


@contextlib.contextmanager
def watching(watch: Watch | None) -> Iterator[None]:
    previous, _local.watch = current_watch(), watch
    try:
        yield
    finally:
        _local.watch = previous


def watched_read(read: Callable[[int, float | None], _Read], max_bytes: int, timeout: float | None) -> _Read:
    """A socket read cut into READ_SLICE pieces: between them, the request's deadlines and the job's cancel.
    Each piece that times out without a byte is retried until the read's own timeout; a byte-a-second
    server keeps every read timeout happy, so only the deadlines stop it."""
    import httpcore2

    watch = current_watch()
    if watch is None:
        return read(max_bytes, timeout)
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        watch.check()
        now = time.monotonic()
        piece = READ_SLICE
        for bound in (end, watch.limit()):
            if bound is not None:
                piece = min(piece, bound - now)
        if end is not None and now >= end:
            raise httpcore2.ReadTimeout("timed out")
        try:
            return read(max_bytes, max(piece, 0.01))
        except httpcore2.ReadTimeout:
            if end is not None and time.monotonic() >= end:
                raise


# --- Metadata files ------------------------------------------------------------------------------------------------


class MetadataError(Exception):
    """A metadata file too big or nested too deeply to read. `reason` completes "…: <reason>"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _human(n: int) -> str:
    from models_app.services.hub_checks import human

    return human(n)


def too_big(name: str, size: int | None = None) -> MetadataError:
    limit = int(settings.HUB_METADATA_MAX_BYTES)
    what = f" ({_human(size)})" if size is not None else ""
    return MetadataError(
        f"its {name}{what} is larger than the {_human(limit)} allowed for a metadata file (HUB_METADATA_MAX_BYTES)"
    )


def check_metadata_size(name: str, size: int | None) -> None:
    """Before a download: the size the Hub announced (model info, Content-Length)."""
    if size is not None and size > int(settings.HUB_METADATA_MAX_BYTES):
        raise too_big(name, size)


_metadata_download: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hub_metadata_name", default=None
)


@contextlib.contextmanager
def metadata_download(name: str) -> Iterator[None]:
    """The GETs made in this context fetch the metadata file `name`: the transport refuses a Content-Length
    over the cap and counts the bytes of the body (a Hub may send no length, or lie)."""
    token = _metadata_download.set(name)
    try:
        yield
    finally:
        _metadata_download.reset(token)


def metadata_name() -> str | None:
    return _metadata_download.get()


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_metadata(data: bytes, name: str) -> Any:
    """JSON of a metadata file, bounded in size and depth. Raises MetadataError, or ValueError if not JSON."""
    if len(data) > int(settings.HUB_METADATA_MAX_BYTES):
        raise too_big(name, len(data))
    try:
        value = json.loads(data)
    except RecursionError:
        raise MetadataError(f"its {name} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise MetadataError(f"its {name} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def read_metadata(path: Path, name: str | None = None) -> Any:
    """A metadata file from disk (cache, snapshot, temp dir): its size is checked before a byte is read, and
    never more than the cap + 1 bytes are read (the file may grow meanwhile). Raises MetadataError, OSError,
    or ValueError if it is not JSON."""
    name = name or path.name
    limit = int(settings.HUB_METADATA_MAX_BYTES)
    with path.open("rb") as f:
        size = path.stat().st_size
        if size > limit:
            raise too_big(name, size)
        data = f.read(limit + 1)
    return parse_metadata(data, name)


# --- After a download ------------------------------------------------------------------------------------------------


def outside_paths(repo_dir: Path, paths: list[Path]) -> list[Path]:
    """Defence in depth after huggingface_hub wrote: every given path, and every entry of a snapshot folder
    among them, resolves inside the repo's folder (or the cache's shared Xet blob store,
    `<cache>/blobs/<2 hex>/<hash>`). Returns the entries that do not."""
    root = repo_dir.resolve()
    shared = (repo_dir.parent / "blobs").resolve()
    entries: list[Path] = []
    for path in paths:
        entries.append(path)
        if path.is_dir() and not path.is_symlink():
            entries.extend(path.rglob("*"))
    resolve = Resolver()
    return [entry for entry in entries if not _inside(Path(resolve(str(entry))), root, shared)]


def _inside(resolved: Path, *folders: Path) -> bool:
    return any(resolved.is_relative_to(folder) for folder in folders)


class Resolver:
    """os.path.realpath for many entries of a few folders (a snapshot's links into blobs/), each folder
    resolved once: realpath walks every component of every path (~14 syscalls for a cached file here, a
    third of a 200-file pull's time after the transfer); this costs a readlink per link.

    A link's target is joined to its folder's real path and normalized lexically only when its ".." lead
    (as huggingface_hub writes them, `../../blobs/<etag>`): those climb real folders. Any other target
    (absolute, or with ".." after a name that may itself be a link) goes to realpath."""

    MAX_LINKS = 40  # as the kernel's limit on links followed in one path

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        for _ in range(self.MAX_LINKS):
            folder, name = os.path.split(path)
            real = self._folders.get(folder)
            if real is None:
                real = self._folders[folder] = os.path.realpath(folder)
            joined = os.path.join(real, name)
            if name in ("", ".", ".."):
                return os.path.realpath(joined)
            try:
                target = os.readlink(joined)
            except OSError:  # not a link, or not there: realpath keeps it as it is
                return joined
            parts = target.split("/")
            climbs = next((i for i, part in enumerate(parts) if part != ".."), len(parts))
            if os.path.isabs(target) or ".." in parts[climbs:]:
                return os.path.realpath(joined)
            path = os.path.normpath(os.path.join(real, target))
        return os.path.realpath(path)
