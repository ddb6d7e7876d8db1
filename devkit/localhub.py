"""A local look-alike of the Hugging Face Hub, for tests, benchmarks and demos.

`LocalHub` runs a threaded stdlib HTTP server on 127.0.0.1 and answers the requests that
huggingface_hub 2.4 sends (see shared/HUB_PROTOCOL.md): repo info, tree, refs, whoami and
`/resolve` downloads with Range support. Tests build repos in-process (`create_repo`,
`commit`, tags, private/gated flags, tokens) and inject network faults through `hub.faults`.

Manual demo: ``python -m devkit.localhub --port 8765 --root DIR`` serves every
``DIR/org/name/`` directory as the public repo ``org/name``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple, Protocol
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from devkit.xetcas import XetCas, XorbResponse, parse_reconstruction_path

# Extensions the Hub stores in LFS whatever their size (weights, archives).
LFS_SUFFIXES = (".safetensors", ".bin", ".npz", ".gguf")
# Large enough for fast local streaming, small enough to keep memory flat for 1 GB files.
_CHUNK = 8 * 1024 * 1024
# bytes.translate table that flips every bit: corrupts data at C speed, never a no-op.
_FLIP = bytes(255 - i for i in range(256))
_SHA_RE = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of `data` (what the Hub uses as ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(dt: datetime) -> str:
    # The Hub's format (millisecond precision, "Z"), which huggingface_hub's parse_datetime reads.
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# ----------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Blob:
    """File content stored once on disk, named by its sha256."""

    sha256: str
    git_sha1: str
    size: int
    path: Path


@dataclass(frozen=True)
class FileEntry:
    path: str
    blob: Blob
    lfs: bool
    oid: str  # git object id: of the LFS pointer for LFS files, of the content otherwise
    pointer_size: int  # 0 for non-LFS files
    last_commit: str  # sha of the commit that last changed this path (tree ?expand=true)
    xet_hash: str = ""  # set in Xet mode: the file is served through the local CAS

    @property
    def etag(self) -> str:
        return self.blob.sha256 if self.lfs else self.blob.git_sha1


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    files: dict[str, FileEntry]  # never mutated once the commit exists
    title: str
    date: datetime


@dataclass
class Repo:
    repo_id: str
    private: bool
    gated: bool
    lfs_threshold: int
    created_at: datetime
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    granted: set[str] = field(default_factory=set)
    extra_info: dict[str, Any] = field(default_factory=dict)
    xet: bool = False  # its LFS files are served through the local CAS

    def resolve(self, rev: str) -> Commit | None:
        """Branch, tag (also as refs/heads/x, refs/tags/x) or full commit sha -> commit."""
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if rev.startswith(prefix) and rev[len(prefix) :] in refs:
                return self.commits[refs[rev[len(prefix) :]]]
        sha = self.branches.get(rev) or self.tags.get(rev) or rev
        return self.commits.get(sha)


@dataclass(frozen=True)
class _Token:
    username: str
    can_read: frozenset[str] | None  # None = every private repo


class Headers(dict[str, str]):
    """Request headers with case-insensitive lookup (keys are stored lower-case)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


class RequestRecord(NamedTuple):
    method: str
    path: str  # raw request target, query string included
    headers: Headers
    status: int


# ----------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected fault; `hits` counts the requests it has applied to."""

    # drop | stall | wrong_bytes | fail_500 | ignore_range | throttle, and the hostile ones:
    # bad_etag | bad_commit | redirect | trickle_headers | lie_size
    kind: str
    pattern: str = "*"  # fnmatch on the repo file path of /resolve requests
    times: int | None = None  # None = every matching request
    methods: frozenset[str] = frozenset({"GET"})
    path: str | None = None  # fnmatch on the URL path; when set, `pattern` is ignored
    amount: float = 0.0  # bytes (drop), seconds (stall) or bytes per second (throttle)
    reset: bool = False  # drop with a TCP RST instead of a clean FIN
    value: str = ""  # the hostile value: an ETag, a commit id, a redirect target
    hits: int = 0
    # hold: the matching requests wait for this (release()), so a test sees what a client shows meanwhile.
    gate: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.gate.set()

    def matches(self, method: str, url_path: str, file_path: str | None) -> bool:
        if method not in self.methods or (self.times is not None and self.hits >= self.times):
            return False
        if self.path is not None:
            return fnmatch.fnmatchcase(url_path, self.path)
        return file_path is not None and fnmatch.fnmatchcase(file_path, self.pattern)


class FaultPlan:
    """Faults for the server to inject; all off until a method below adds one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def drop_after(
        self, n_bytes: int, pattern: str = "*", times: int | None = 1, *, reset: bool = False
    ) -> Fault:
        """Send the headers and `n_bytes` of body, then close the connection."""
        return self._add(Fault("drop", pattern, times, amount=n_bytes, reset=reset))

    def stall_after_headers(
        self, seconds: float, pattern: str = "*", times: int | None = 1, *, path: str | None = None
    ) -> Fault:
        """Send the headers, wait `seconds` (cut short by stop()), then send the body. With `path` (fnmatch
        on the URL path of an /api/ route, e.g. "*/xet-read-token/*"), wait before answering that route."""
        return self._add(Fault("stall", pattern, times, path=path, amount=seconds))

    def hold(self, path: str) -> Fault:
        """Requests to /api/ routes matching `path` wait, unanswered, until the fault's release() (or stop())."""
        return self._add(Fault("hold", "*", None, frozenset({"GET", "HEAD", "POST"}), path))

    def wrong_bytes(self, pattern: str = "*", times: int | None = None) -> Fault:
        """Serve the right number of bytes, every one of them wrong (bits flipped)."""
        return self._add(Fault("wrong_bytes", pattern, times))

    def fail_500(
        self,
        times: int | None = 1,
        pattern: str = "*",
        *,
        methods: Iterable[str] = ("GET", "HEAD"),
        path: str | None = None,
    ) -> Fault:
        """Answer 500. Applies to /resolve files matching `pattern`, or, with `path`
        (fnmatch on the URL path, e.g. "/api/models/*"), to any route."""
        return self._add(Fault("fail_500", pattern, times, frozenset(m.upper() for m in methods), path))

    def ignore_range(self, pattern: str = "*", times: int | None = None) -> Fault:
        """Answer 200 with the whole body even when a Range header was sent."""
        return self._add(Fault("ignore_range", pattern, times))

    def throttle(self, bytes_per_second: float, pattern: str = "*", times: int | None = None) -> Fault:
        """Rate-limit the body."""
        return self._add(Fault("throttle", pattern, times, amount=bytes_per_second))

    # -- a hostile Hub (a mirror, a proxy, a MITM on an http:// endpoint): answers that must not be trusted

    def bad_etag(self, etag: str, pattern: str = "*", times: int | None = None) -> Fault:
        """Answer /resolve (HEAD and GET) with this ETag (and X-Linked-Etag for LFS files), e.g. a path."""
        return self._add(Fault("bad_etag", pattern, times, frozenset({"GET", "HEAD"}), value=etag))

    def bad_commit(self, sha: str, repo_id: str, *, in_header: bool = False) -> Fault:
        """Model info of `repo_id` says its commit is `sha`, and /resolve accepts `sha` as a revision (it
        serves main). `in_header` also puts `sha` in every X-Repo-Commit header."""
        methods = frozenset({"GET", "HEAD"})
        return self._add(
            Fault("bad_commit", "*", None, methods, path=f"*/{repo_id}/*", value=sha, reset=in_header)
        )

    def redirect(
        self, location: str, pattern: str = "*", times: int | None = None, *, path: str | None = None
    ) -> Fault:
        """Answer 302 to `location` (with the file's metadata headers, as the Hub redirects LFS files to its
        CDN). Applies to /resolve files matching `pattern`, or with `path` to any route."""
        return self._add(Fault("redirect", pattern, times, frozenset({"GET", "HEAD"}), path, value=location))

    def trickle_headers(
        self,
        seconds_per_byte: float,
        pattern: str = "*",
        times: int | None = None,
        *,
        path: str | None = None,
    ) -> Fault:
        """Send the status line and headers one byte every `seconds_per_byte` (cut short by stop()).
        Applies to /resolve files matching `pattern`, or with `path` to any route."""
        methods = frozenset({"GET", "HEAD"})
        return self._add(Fault("trickle_headers", pattern, times, methods, path, amount=seconds_per_byte))

    def trickle_body(self, seconds_per_byte: float, *, path: str) -> Fault:
        """Send an API answer's body (routes matching `path`) one byte every `seconds_per_byte`."""
        return self._add(Fault("trickle_body", "*", None, frozenset({"GET"}), path, amount=seconds_per_byte))

    def lie_size(self, size: int, pattern: str = "*", times: int | None = None) -> Fault:
        """Claim `size` bytes for the file (model info, HEAD) but send the whole file on GET without a
        Content-Length (the connection closes after it): only counting the bytes finds the lie."""
        return self._add(Fault("lie_size", pattern, times, frozenset({"GET", "HEAD"}), amount=size))

    def bad_tree_lfs_oid(self, oid: str, pattern: str = "*") -> Fault:
        """Tree listings give LFS files matching `pattern` this `lfs.oid` and a well-formed `xetHash`: with
        hf_xet installed, huggingface_hub names the blob after `lfs.oid` without any HEAD."""
        return self._add(Fault("bad_tree_lfs_oid", pattern, None, frozenset({"GET"}), value=oid))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def find(self, kind: str, method: str, url_path: str) -> Fault | None:
        """The first path-based fault of `kind` for this request, without counting a hit."""
        with self._lock:
            return next(
                (f for f in self._faults if f.kind == kind and f.matches(method, url_path, None)), None
            )

    def matching(self, kind: str, files: Iterable[str]) -> list[Fault]:
        """Faults of `kind` whose pattern matches one of `files` (not counted as hits): for answers that
        describe files without fetching them (model info)."""
        with self._lock:
            faults = [f for f in self._faults if f.kind == kind and f.path is None]
        return [f for f in faults if any(fnmatch.fnmatchcase(name, f.pattern) for name in files)]

    def take(self, method: str, url_path: str, file_path: str | None) -> dict[str, Fault]:
        """Faults of each kind that apply to this request; each one taken counts a hit."""
        taken: dict[str, Fault] = {}
        with self._lock:
            for fault in self._faults:
                if fault.kind not in taken and fault.matches(method, url_path, file_path):
                    fault.hits += 1
                    taken[fault.kind] = fault
        return taken


# ----------------------------------------------------------------------------- the hub


class LocalHub:
    """In-process Hub look-alike. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        storage_dir: Path | None = None,
        *,
        port: int = 0,
        copy_files: bool = True,
        xet: bool = False,
        xet_transport: Literal["local", "http"] = "local",
    ) -> None:
        # copy_files=False serves Path contents in place (demo mode over a directory that
        # stays put); tests keep the default so later edits of a source file can't leak in.
        self._own_storage = storage_dir is None
        self.storage_dir = Path(tempfile.mkdtemp(prefix="localhub-")) if storage_dir is None else storage_dir
        self._blob_dir = self.storage_dir / "blobs"
        self._blob_dir.mkdir(parents=True, exist_ok=True)
        # Xet mode (HUB_PROTOCOL.md §9): LFS files also go into a local CAS, and their HEAD/GET answers
        # carry X-Xet-Hash, so huggingface_hub fetches them with hf_xet instead of our GET. The token route names
        # the CAS by `xet_transport`: "local" hands hf_xet the directory (one database that admits one process at
        # a time: publish every repo before a client downloads); "http" hands it this server's /cas, which serves
        # the same directory as the Hub's CAS server does (devkit/xetcas.py), to any number of processes,
        # and can throttle or stall it (throttle_xet, stall_xet) while counting what it sends.
        self.xet = xet
        self.xet_transport = xet_transport
        self.cas_dir = self.storage_dir / "cas"
        self._xet_hashes: dict[str, str] = {}  # sha256 -> Xet hash
        self._port = port
        self._copy_files = copy_files
        self._lock = threading.RLock()
        self._repos: dict[str, Repo] = {}
        self._tokens: dict[str, _Token] = {}
        self._counter = itertools.count(1)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # wakes stalled / throttled responses on stop()
        self.cas = XetCas(self.cas_dir, self._stopping)
        self._connections: set[socket.socket] = set()
        self.url = ""
        self.faults = FaultPlan()
        self.requests: list[RequestRecord] = []
        # Body bytes written to clients per (repo_id, file path): how much a download really fetched.
        self.bytes_served: Counter[tuple[str, str]] = Counter()
        # Models per /api/models page; more follow through the Link header, as on the Hub.
        self.list_page_size = 1000

    # -- lifecycle

    def start(self) -> LocalHub:
        if self._server is not None:
            raise RuntimeError("LocalHub already started")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), _Handler, self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval keeps stop() quick; daemon threads never block interpreter exit.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (at once, even with stalled responses); deletes the storage dir
        if the hub made it, so such a hub cannot be started again."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        # Keep-alive and stalled connections would otherwise linger in their daemon threads.
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._own_storage:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def served(self, repo_id: str, path: str) -> int:
        """Body bytes of one file sent so far, over every request (ranges and cut transfers included)."""
        with self._lock:
            return self.bytes_served[(repo_id, path)]

    def _count_served(self, key: tuple[str, str], n: int) -> None:
        with self._lock:
            self.bytes_served[key] += n

    # -- repos

    def create_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        private: bool = False,
        gated: bool = False,
        branch: str = "main",
        lfs_threshold: int = 1024,
        info: Mapping[str, Any] | None = None,
        raw_paths: bool = False,
        xet: bool | None = None,
    ) -> str:
        """Create a repo whose `branch` holds `files`; returns that commit's sha.

        A branch other than main forks from an empty initial commit on main, as on the Hub.
        `info` adds or overrides fields of the model info JSON (e.g. pipeline_tag, downloads).
        `raw_paths` keeps file names exactly as given ("/etc/x", "../x", "C:\\x"): a hostile listing.
        `xet` serves this repo's LFS files through the local CAS (default: the hub's own mode), so one hub can
        serve a repo over plain HTTP and another through Xet.
        """
        xet = self.xet if xet is None else xet
        blobs = self._store_all(files, strip=not raw_paths)
        if xet:
            self._upload_xet(blobs.values(), lfs_threshold)
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} already exists")
            repo = Repo(repo_id, private, gated, lfs_threshold, datetime.now(UTC), xet=xet)
            repo.extra_info.update(info or {})
            if branch != "main":
                self._add_commit(repo, "main", {}, (), "Initial commit")
            sha = self._add_commit(repo, branch, blobs, (), f"Upload {len(blobs)} files")
            # Published only now, with its commits: requests never see a half-made repo.
            self._repos[repo_id] = repo
        return sha

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        delete: Iterable[str] = (),
        branch: str = "main",
    ) -> str:
        """Add/replace `files` and remove `delete` on top of `branch` (created from main
        if missing); returns the new commit sha, which always differs from the parent's."""
        blobs = self._store_all(files)
        with self._lock:
            threshold, xet = self._repo(repo_id).lfs_threshold, self._repo(repo_id).xet
        if xet:
            self._upload_xet(blobs.values(), threshold)
        with self._lock:
            return self._add_commit(self._repo(repo_id), branch, blobs, delete, f"Update {len(blobs)} files")

    def delete_repo(self, repo_id: str) -> None:
        """Forget a repo (blobs stay on disk); handy with a session-wide hub."""
        with self._lock:
            self._repos.pop(repo_id, None)

    def add_tag(self, repo_id: str, tag: str, sha: str) -> None:
        """Tag a commit (`sha` may also be a branch or tag name)."""
        with self._lock:
            repo = self._repo(repo_id)
            commit = repo.resolve(sha)
            if commit is None:
                raise KeyError(f"unknown revision {sha} in {repo_id}")
            repo.tags[tag] = commit.sha

    def set_private(self, repo_id: str, private: bool) -> None:
        with self._lock:
            self._repo(repo_id).private = private

    def set_gated(self, repo_id: str, gated: bool) -> None:
        with self._lock:
            self._repo(repo_id).gated = gated

    def grant_gated(self, repo_id: str, username: str) -> None:
        with self._lock:
            self._repo(repo_id).granted.add(username)

    def update_info(self, repo_id: str, **fields: Any) -> None:
        """Add or override fields of the repo's model info JSON (e.g. downloads=10)."""
        with self._lock:
            self._repo(repo_id).extra_info.update(fields)

    def add_token(
        self, token: str, username: str = "alice", *, can_read: Iterable[str] | None = None
    ) -> None:
        """Accept `token` as `username`; it reads the private repos in `can_read` (None = all)."""
        with self._lock:
            self._tokens[token] = _Token(username, None if can_read is None else frozenset(can_read))

    def head_sha(self, repo_id: str, branch: str = "main") -> str:
        with self._lock:
            return self._repo(repo_id).branches[branch]

    def repo(self, repo_id: str) -> Repo:
        """The repo's state, for assertions (do not mutate)."""
        with self._lock:
            return self._repo(repo_id)

    # -- internals

    def _repo(self, repo_id: str) -> Repo:
        try:
            return self._repos[repo_id]
        except KeyError:
            raise KeyError(f"unknown repo {repo_id}") from None

    def _add_commit(
        self, repo: Repo, branch: str, blobs: Mapping[str, Blob], delete: Iterable[str], title: str
    ) -> str:
        parent_sha = repo.branches.get(branch) or repo.branches.get("main")
        files = dict(repo.commits[parent_sha].files) if parent_sha else {}
        for path in delete:
            files.pop(path.strip("/"), None)
        counter = next(self._counter)
        digest = hashlib.sha1(f"{parent_sha or ''}\n{counter}\n".encode())
        new_entries = {path: self._entry(repo, path, blob) for path, blob in blobs.items()}
        files.update(new_entries)
        for path, entry in sorted(files.items()):
            digest.update(f"{path}\0{entry.oid}\n".encode())
        sha = digest.hexdigest()
        # Files written by this commit point at it for their lastCommit.
        files.update({path: replace(entry, last_commit=sha) for path, entry in new_entries.items()})
        repo.commits[sha] = Commit(sha, parent_sha, files, title, datetime.now(UTC))
        repo.branches[branch] = sha
        return sha

    def _entry(self, repo: Repo, path: str, blob: Blob) -> FileEntry:
        if blob.size >= repo.lfs_threshold or path.endswith(LFS_SUFFIXES):
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{blob.sha256}\nsize {blob.size}\n"
            ).encode()
            xet_hash = self._xet_hashes.get(blob.sha256, "") if repo.xet else ""
            return FileEntry(path, blob, True, git_blob_sha1(pointer), len(pointer), "", xet_hash)
        return FileEntry(path, blob, False, blob.git_sha1, 0, "")

    def xet_hashes(self) -> dict[str, str]:
        """sha256 -> Xet hash of every blob in the CAS."""
        with self._lock:
            return dict(self._xet_hashes)

    def xet_hash(self, repo_id: str, path: str, rev: str = "main") -> str:
        with self._lock:
            commit = self._repo(repo_id).resolve(rev)
            if commit is None:
                raise KeyError(f"unknown revision {rev} in {repo_id}")
            return commit.files[path].xet_hash

    # -- the CAS over HTTP (xet_transport="http"); a stall or throttle shows only there

    def xorbs_of(self, xet_hash: str) -> set[str]:
        """The xorbs holding a file's chunks (a xorb may also hold chunks of other files uploaded with it)."""
        return self.cas.xorbs_of(xet_hash)

    def throttle_xet(self, bytes_per_second: float, xorbs: Iterable[str] | None = None) -> None:
        """Send the bytes of these xorbs (default: all) at this rate, shared by every response at once."""
        self.cas.throttle(bytes_per_second, xorbs)

    def stall_xet(self, xorbs: Iterable[str] | None = None) -> None:
        """Answer ranges of these xorbs (default: all) with headers, then nothing, until release_xet() or the
        client closes the connection."""
        self.cas.stall(xorbs)

    def release_xet(self) -> None:
        """End every throttle and stall: waiting responses go on at full speed."""
        self.cas.release()

    def xet_bytes_sent(self, xet_hash: str) -> int:
        """Xorb bytes of this file the CAS has sent, over every response (ranges cut short included)."""
        return self.cas.bytes_sent(xet_hash)

    def xet_responses(self, xet_hash: str | None = None) -> list[XorbResponse]:
        """The xorb range responses so far (of the xorbs holding this file): bytes sent, and how each ended."""
        return self.cas.xorb_responses(None if xet_hash is None else self.xorbs_of(xet_hash))

    @property
    def cas_url(self) -> str:
        """What the token route hands hf_xet."""
        return f"{self.url}/cas" if self.xet_transport == "http" else self.local_cas_url

    @property
    def local_cas_url(self) -> str:
        """Where uploads go whatever the transport: hf_xet's local CAS builds the store the HTTP CAS reads."""
        return f"local://{self.cas_dir.resolve()}"

    def _upload_xet(self, blobs: Iterable[Blob], lfs_threshold: int) -> None:
        """Put the blobs the Hub would store in LFS into the local CAS (one hf_xet call)."""
        # Which blobs become LFS also depends on the file name; uploading a small one too costs nothing.
        todo = sorted(
            {b.path: b for b in blobs if b.sha256 not in self._xet_hashes}.values(), key=lambda b: b.path
        )
        if not todo:
            return
        import hf_xet

        self.cas_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Deprecated in favour of XetSession upload commits, but the one call that needs no Hub at all.
            warnings.simplefilter("ignore", DeprecationWarning)
            infos = hf_xet.upload_files(
                [str(b.path) for b in todo], self.local_cas_url, None, None, None, "model"
            )
        self.cas.reload()
        with self._lock:
            for blob, info in zip(todo, infos, strict=True):
                self._xet_hashes[blob.sha256] = info.hash

    def _store_all(self, files: Mapping[str, bytes | Path], *, strip: bool = True) -> dict[str, Blob]:
        # Called outside the lock: hashing and copying 1 GB files takes seconds.
        return {(path.strip("/") if strip else path): self._store(content) for path, content in files.items()}

    def _store(self, content: bytes | Path) -> Blob:
        """Hash `content` and keep it under blobs/{sha256}; files are streamed, never loaded whole."""
        if isinstance(content, bytes | bytearray | memoryview):
            data = bytes(content)
            sha256 = hashlib.sha256(data).hexdigest()
            dest = self._blob_dir / sha256
            if not dest.exists():
                self._write_atomic(dest, data)
            return Blob(sha256, git_blob_sha1(data), len(data), dest)

        src = Path(content)
        size = src.stat().st_size
        h256, h1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)

        def chunks() -> Iterable[bytes]:
            # One pass: hash while copying, so a 1 GB file is read once.
            with open(src, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    h256.update(chunk)
                    h1.update(chunk)
                    yield chunk

        if not self._copy_files:
            for _ in chunks():
                pass
            return Blob(h256.hexdigest(), h1.hexdigest(), size, src)
        with tempfile.NamedTemporaryFile(dir=self._blob_dir, delete=False) as tmp:
            for chunk in chunks():
                tmp.write(chunk)
        dest = self._blob_dir / h256.hexdigest()
        os.replace(tmp.name, dest)
        return Blob(h256.hexdigest(), h1.hexdigest(), size, dest)

    @staticmethod
    def _write_atomic(dest: Path, data: bytes) -> None:
        # Write then rename: a concurrent reader never sees a half-written blob.
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, dest)

    def _token(self, authorization: str | None) -> _Token | None:
        # Unknown tokens count as anonymous: private repos then answer 401 RepoNotFound.
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        with self._lock:
            return self._tokens.get(authorization[7:].strip())


# ----------------------------------------------------------------------------- HTTP


class _HubError(Exception):
    """An error answer: status, X-Error-Code / X-Error-Message and extra headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled response must never block stop() or interpreter exit
    request_queue_size = 128  # snapshot_download opens 8 connections at once, benchmarks more

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], hub: LocalHub
    ) -> None:
        self.hub = hub
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 for keep-alive (the client pools connections); every answer sets Content-Length.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, a keep-alive client waits ~40 ms per request
    # for a delayed ACK (200 small files took 9.1 s instead of 0.11 s with curl), a stall the real Hub lacks.
    disable_nagle_algorithm = True
    server: _Server
    _served_key: tuple[str, str] = ("", "")  # the file a /resolve body belongs to (hub.bytes_served)

    def setup(self) -> None:
        super().setup()
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.hub._lock:
            self.server.hub._connections.discard(self.connection)
        with contextlib.suppress(OSError):  # the client or a fault already closed the socket
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read hub.requests instead of stderr noise

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    # -- plumbing

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        """Send the status line and headers, and log the request."""
        self._started = True
        with self.hub._lock:
            self.hub.requests.append(
                RequestRecord(self.command, self.path, Headers(self.headers.items()), status)
            )
        if trickle := self._faults.get("trickle_headers"):
            return self._trickle(status, headers, trickle.amount)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _trickle(self, status: int, headers: Mapping[str, str], seconds_per_byte: float) -> None:
        """Status line and headers, one byte at a time: alive enough for any read timeout, never done."""
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        lines += [f"Server: {self.version_string()}", f"Date: {self.date_time_string()}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            if self.hub._stopping.wait(seconds_per_byte):
                self.close_connection = True
                return

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self._start(status, {"Content-Length": str(len(body)), **(headers or {})})
        if self.command == "HEAD":
            return
        if trickle := self._faults.get("trickle_body"):
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                if self.hub._stopping.wait(trickle.amount):
                    self.close_connection = True
                    return
            return
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json; charset=utf-8"})

    def _error(self, err: _HubError) -> None:
        # Header values must be latin-1: escape whatever a file name may bring.
        message = err.message.encode("ascii", "backslashreplace").decode()
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
        if err.code:
            headers["X-Error-Code"] = err.code
        headers.update(err.headers)
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers)

    def _dispatch(self) -> None:
        # Drain any request body so keep-alive stays in sync (only paths-info reads it; no uploads).
        self._body = b""
        if length := int(self.headers.get("Content-Length") or 0):
            self._body = self.rfile.read(length)
        self._started = False
        self._faults: dict[str, Fault] = {}
        url = urlsplit(self.path)
        self._query = parse_qs(url.query)
        self._user = self.hub._token(self.headers.get("Authorization"))
        try:
            if url.path.startswith("/cas/"):
                self._cas(url.path[len("/cas") :])
            elif url.path.startswith("/api/"):
                self._faults = self.hub.faults.take(self.command, unquote(url.path), None)
                if fault := self._faults.get("fail_500"):
                    raise _HubError(500, None, f"Internal Error (injected fault #{fault.hits})")
                if stall := self._faults.get("stall"):
                    self.hub._stopping.wait(stall.amount)
                if hold := self._faults.get("hold"):
                    while not hold.gate.wait(0.05) and not self.hub._stopping.is_set():
                        pass
                if fault := self._faults.get("redirect"):
                    return self._send(302, b"", {"Location": fault.value})
                self._api(url.path)
            else:
                self._resolve(url.path)
        except _HubError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away mid-response
        except Exception as exc:
            # A bug in the hub: answer 500 if still possible, and keep the traceback visible.
            if not self._started:
                self._error(_HubError(500, None, f"LocalHub bug: {exc!r}"))
            raise

    # -- access control

    def _find_repo(self, segments: list[str]) -> tuple[Repo, list[str]]:
        """Split raw path segments into a known repo ("org/name" or legacy "name") and the rest."""
        with self.hub._lock:
            for n in (2, 1):
                repo = self.hub._repos.get("/".join(unquote(s) for s in segments[:n]))
                if repo is not None and len(segments) >= n:
                    break
            else:
                raise _HubError(404, "RepoNotFound", "Repository not found")
            if repo.private and not self._can_read(repo):
                # The Hub does not reveal private repos: anonymous -> 401, other users -> 404.
                raise _HubError(401 if self._user is None else 404, "RepoNotFound", "Repository not found")
            return repo, segments[n:]

    def _can_read(self, repo: Repo) -> bool:
        user = self._user
        return user is not None and (user.can_read is None or repo.repo_id in user.can_read)

    def _check_gate(self, repo: Repo) -> None:
        # Like the Hub, gating only guards file contents; info and tree stay readable.
        if repo.gated and (self._user is None or self._user.username not in repo.granted):
            status = 401 if self._user is None else 403
            raise _HubError(status, "GatedRepo", f"Access to model {repo.repo_id} is restricted.")

    @staticmethod
    def _split_rev(repo: Repo, segments: list[str], need_path: bool) -> tuple[Commit, str]:
        """Split `rev/path...` into a commit and a path. The rev is normally one URL-encoded
        segment (refs%2Fpr%2F1), but an unencoded rev with slashes is accepted too."""
        last = len(segments) - 1 if need_path else len(segments)
        for k in range(1, last + 1):
            commit = repo.resolve(unquote("/".join(segments[:k])))
            if commit is not None:
                return commit, unquote("/".join(segments[k:]))
        rev = unquote(segments[0]) if segments else ""
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    # -- API routes

    def _api(self, path: str) -> None:
        if path == "/api/whoami-v2":
            return self._whoami()
        if path == "/api/agent-harnesses":
            # Empty registry: the client's agent detection stays quiet.
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if path.rstrip("/") == "/api/models":
            return self._list_models()
        if not path.startswith("/api/models/"):
            raise _HubError(404, None, "Not Found")
        repo, rest = self._find_repo(path[len("/api/models/") :].split("/"))
        # Build the answer under the lock, send it outside: a slow client must not block the hub.
        with self.hub._lock:
            data: Any
            if not rest or rest == [""]:
                data = self._info(repo, self._commit(repo, "main"))
            elif rest[0] == "revision" and len(rest) > 1:
                data = self._info(repo, self._commit(repo, unquote("/".join(rest[1:]))))
            elif rest == ["refs"]:
                data = self._refs(repo)
            elif rest[0] == "xet-read-token" and len(rest) == 2 and repo.xet:
                self._commit(repo, unquote(rest[1]))
                self._check_gate(repo)
                data = None
            elif rest[0] == "tree" and len(rest) > 1:
                commit, base = self._split_rev(repo, rest[1:], need_path=False)
                data = self._tree(repo, commit, base.strip("/"))
            elif rest[0] == "paths-info" and len(rest) > 1 and self.command == "POST":
                data = self._paths_info(repo, self._commit(repo, unquote("/".join(rest[1:]))))
            else:
                raise _HubError(404, None, "Not Found")
        if data is None:
            return self._xet_token()
        self._json(data)

    def _xet_token(self) -> None:
        """The CAS connection for hf_xet: headers (what huggingface_hub reads) and the JSON the Rust client
        reads when it refreshes the token."""
        expires = int(time.time()) + 3600
        token = hashlib.sha256(f"{expires}".encode()).hexdigest()[:32]
        self.hub.cas.issue_token(token)
        body = {"casUrl": self.hub.cas_url, "accessToken": token, "exp": expires}
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Xet-Cas-Url": self.hub.cas_url,
            "X-Xet-Access-Token": token,
            "X-Xet-Token-Expiration": str(expires),
        }
        self._send(200, json.dumps(body).encode(), headers)

    @staticmethod
    def _commit(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    def _whoami(self) -> None:
        if self._user is None:
            raise _HubError(401, None, "Invalid user token.")
        name = self._user.username
        self._json(
            {
                "type": "user",
                "id": hashlib.sha1(name.encode()).hexdigest()[:24],
                "name": name,
                "fullname": name,
                "email": f"{name}@localhub.test",
                "emailVerified": True,
                "isPro": False,
                "canPay": False,
                "avatarUrl": "",
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": f"{name}-token", "role": "read"},
                },
            }
        )

    # What /api/models gives per model without `full` or `expand` (as the Hub's compact listing).
    _LIST_FIELDS = (
        "_id",
        "id",
        "modelId",
        "likes",
        "downloads",
        "tags",
        "library_name",
        "createdAt",
        "private",
    )
    # The Hub's sort keys (huggingface_hub maps last_modified -> lastModified, trending_score -> trendingScore).
    _SORT_KEYS = ("downloads", "likes", "lastModified", "createdAt", "trendingScore")

    def _list_models(self) -> None:
        """GET /api/models: search, author, filter (tags or library), pipeline_tag, sort/direction, limit,
        full/expand, paginated by `cursor` with a `Link: <...>; rel="next"` header (hub.list_page_size)."""
        if self.headers.get("Authorization") and self._user is None:
            # As the Hub answers a listing sent with a token it does not know (revoked, mistyped).
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        q = {k: v[-1] for k, v in self._query.items()}
        filters = self._query.get("filter", []) + self._query.get("library", [])
        expand = self._query.get("expand", [])
        full = q.get("full", "").lower() in ("1", "true")
        with self.hub._lock:
            found = []
            for repo in sorted(self.hub._repos.values(), key=lambda r: r.repo_id):
                info = self._info(repo, repo.commits[repo.branches["main"]])
                if (
                    (repo.private and not self._can_read(repo))
                    or ("author" in q and info["author"] != q["author"])
                    or ("search" in q and q["search"].lower() not in repo.repo_id.lower())
                    or ("pipeline_tag" in q and info.get("pipeline_tag") != q["pipeline_tag"])
                    or any(f not in info["tags"] and f != info["library_name"] for f in filters)
                ):
                    continue
                info.setdefault("trendingScore", 0)
                if safetensors := self._safetensors(repo.commits[repo.branches["main"]]):
                    info.setdefault("safetensors", safetensors)
                found.append(info)
        if (sort := q.get("sort")) in self._SORT_KEYS:
            # Stable sort on top of repo-id order; direction -1 (what the Hub defaults to) is descending.
            found.sort(key=lambda i: i.get(sort) or 0, reverse=q.get("direction", "-1") == "-1")
        # As on the Hub, `limit` is the page size (bounded by the Hub's own); the Link header leads on.
        size = self.hub.list_page_size
        if q.get("limit", "").isdigit() and int(q["limit"]) > 0:
            size = min(size, int(q["limit"]))
        start = int(q["cursor"]) if q.get("cursor", "").isdigit() else 0
        page = found[start : start + size]
        keep = set(self._LIST_FIELDS) if not (full or expand) else None
        if expand:
            keep = {"_id", "id", *expand}
        shaped = [{k: v for k, v in i.items() if keep is None or k in keep} for i in page]
        if not full and "siblings" not in expand:
            for item in shaped:
                item.pop("siblings", None)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if start + size < len(found):
            query = [(k, v) for k, vs in self._query.items() if k != "cursor" for v in vs]
            query.append(("cursor", str(start + size)))
            host = self.headers.get("Host", "127.0.0.1")
            headers["Link"] = f'<http://{host}/api/models?{urlencode(query)}>; rel="next"'
        self._send(200, json.dumps(shaped).encode(), headers)

    @staticmethod
    def _safetensors(commit: Commit) -> dict[str, Any] | None:
        """Parameters per dtype read from the .safetensors headers, as the Hub's `safetensors` field."""
        counts: Counter[str] = Counter()
        for path, entry in commit.files.items():
            if not path.endswith(".safetensors"):
                continue
            try:
                with open(entry.blob.path, "rb") as f:
                    (length,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(min(length, 100_000_000)))
            except (OSError, ValueError, struct.error):
                continue
            if not isinstance(header, dict):  # test files of random bytes: no header to read
                continue
            for name, tensor in header.items():
                if name != "__metadata__" and isinstance(tensor, dict):
                    n = 1
                    for dim in tensor.get("shape", []):
                        n *= int(dim)
                    counts[str(tensor.get("dtype"))] += n
        if not counts:
            return None
        return {"parameters": dict(counts), "total": sum(counts.values())}

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        blobs = self._query.get("blobs", [""])[-1].lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.blob.size, blobId=entry.oid)
                if entry.lfs:
                    sibling["lfs"] = {
                        "sha256": entry.blob.sha256,
                        "size": entry.blob.size,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "library_name": "mlx",
            "tags": ["mlx"],
            "siblings": siblings,
            "usedStorage": sum(e.blob.size for e in commit.files.values()),
        }
        if config := self._config(commit):
            info["config"] = config
        info.update(repo.extra_info)
        if fault := self._faults.get("bad_commit"):
            info["sha"] = fault.value
        for fault in self.hub.faults.matching("lie_size", commit.files):
            for sibling in siblings:
                if fnmatch.fnmatchcase(sibling["rfilename"], fault.pattern) and "size" in sibling:
                    sibling["size"] = int(fault.amount)
                    if "lfs" in sibling:
                        sibling["lfs"]["size"] = int(fault.amount)
        return info

    @staticmethod
    def _config(commit: Commit) -> dict[str, Any] | None:
        """The bits of config.json the Hub copies into model info."""
        entry = commit.files.get("config.json")
        if entry is None or entry.blob.size > 1_000_000:
            return None
        try:
            config = json.loads(entry.blob.path.read_bytes())
        except (ValueError, OSError, RecursionError):  # a hostile config nested too deep: no summary
            return None
        if not isinstance(config, dict):
            return None
        return {k: config[k] for k in ("architectures", "model_type", "quantization") if k in config}

    @staticmethod
    def _refs(repo: Repo) -> dict[str, Any]:
        def ref(name: str, kind: str, sha: str) -> dict[str, str]:
            full = name if name.startswith("refs/") else f"refs/{kind}/{name}"
            return {"name": name, "ref": full, "targetCommit": sha}

        branches = sorted(repo.branches.items())
        return {
            "branches": [ref(n, "heads", s) for n, s in branches if not n.startswith("refs/pr/")],
            "tags": [ref(n, "tags", s) for n, s in sorted(repo.tags.items())],
            "converts": [],
            "pullRequests": [ref(n, "heads", s) for n, s in branches if n.startswith("refs/pr/")],
        }

    def _paths_info(self, repo: Repo, commit: Commit) -> list[dict[str, Any]]:
        """POST paths-info (form or JSON body: paths, expand): the named files that exist, as the tree lists
        them (what olah, online, asks before serving a file)."""
        body = self._body.decode("utf-8", "replace")
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = list((json.loads(body or "{}") or {}).get("paths") or [])
        else:
            paths = parse_qs(body).get("paths", [])
        out = []
        for path in paths:
            entry = commit.files.get(str(path))
            if entry is not None:
                item: dict[str, Any] = {
                    "type": "file",
                    "oid": entry.oid,
                    "size": entry.blob.size,
                    "path": path,
                }
                if entry.lfs:
                    item["lfs"] = {
                        "oid": entry.blob.sha256,
                        "size": entry.blob.size,
                        "pointerSize": entry.pointer_size,
                    }
                out.append(item)
        return out

    def _tree(self, repo: Repo, commit: Commit, base: str) -> list[dict[str, Any]]:
        recursive = self._query.get("recursive", [""])[-1].lower() in ("1", "true")
        expand = self._query.get("expand", [""])[-1].lower() in ("1", "true")
        prefix = f"{base}/" if base else ""
        if base and base in commit.files:
            raise _HubError(404, "EntryNotFound", f"{base} is a file, not a directory")
        dirs: dict[str, Any] = {}  # path -> running sha1 of the files below
        files: list[FileEntry] = []
        for path, entry in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            depth = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            for i in range(1, depth + 1):
                # Directory ids hash their path and content: they change when a file below changes.
                folder = prefix + "/".join(parts[:i])
                dirs.setdefault(folder, hashlib.sha1(f"tree {folder}".encode())).update(entry.oid.encode())
            if recursive or len(parts) == 1:
                files.append(entry)
        if base and not files and not dirs:
            raise _HubError(404, "EntryNotFound", f"{base} does not exist", {"X-Repo-Commit": commit.sha})
        out: list[dict[str, Any]] = [
            {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}
            for path, digest in sorted(dirs.items())
        ]
        for entry in files:
            item: dict[str, Any] = {
                "type": "file",
                "oid": entry.oid,
                "size": entry.blob.size,
                "path": entry.path,
            }
            if entry.lfs:
                item["lfs"] = {
                    "oid": entry.blob.sha256,
                    "size": entry.blob.size,
                    "pointerSize": entry.pointer_size,
                }
                if entry.xet_hash:  # as the real Hub lists its Xet files (HUB_PROTOCOL.md §3)
                    item["xetHash"] = entry.xet_hash
                for fault in self.hub.faults.matching("bad_tree_lfs_oid", [entry.path]):
                    item["lfs"]["oid"] = fault.value
                    item["xetHash"] = hashlib.sha256(entry.blob.sha256.encode()).hexdigest()
            if expand:
                last = repo.commits.get(entry.last_commit, commit)
                item["lastCommit"] = {"id": last.sha, "title": last.title, "date": _iso(last.date)}
            out.append(item)
        return out

    # -- /cas (xet_transport="http")

    def _cas(self, path: str) -> None:
        """The CAS server's download routes (devkit/xetcas.py): reconstructions, then xorb ranges."""
        cas = self.hub.cas
        if self.hub.xet_transport != "http" or self.command != "GET":
            raise _HubError(404, None, "Not Found")
        range_header = self.headers.get("Range")
        if wanted := parse_reconstruction_path(path):
            version, file_hash = wanted
            if not cas.authorized(self.headers.get("Authorization")):
                raise _HubError(401, None, "Invalid or expired Xet access token")
            first, last = 0, None
            if range_header and (m := re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", range_header)):
                first, last = int(m[1]), int(m[2]) if m[2] else None
            try:
                answer = cas.reconstruction(
                    file_hash, first, last, f"{self.hub.url}/cas/xorbs/default", version
                )
            except KeyError:
                raise _HubError(404, None, f"File {file_hash} not found") from None
            if answer is None:
                raise _HubError(416, None, "Range Not Satisfiable")
            return self._json(answer)
        m = re.fullmatch(r"/xorbs/default/([0-9a-f]{64})", path)
        xorb = cas.xorb_path(m[1]) if m else None
        if m is None or xorb is None or not xorb.is_file():
            raise _HubError(404, None, "Not Found")
        size = xorb.stat().st_size
        start, end, status = 0, size - 1, 200
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        parsed = _parse_range(range_header, size) if range_header else None
        if parsed == "unsatisfiable":
            raise _HubError(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
        if isinstance(parsed, tuple):
            (start, end), status = parsed, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        self._start(status, headers)
        if cas.serve_xorb(self.connection, self.wfile.write, m[1], start, end).state != "complete":
            self.close_connection = True

    # -- /resolve

    def _resolve(self, path: str) -> None:
        segments = path.lstrip("/").split("/")
        # /{org}/{name}/resolve/{rev}/{path} or the legacy /{name}/resolve/{rev}/{path}
        if "resolve" not in segments[1:3]:
            raise _HubError(404, None, "Not Found")
        repo, rest = self._find_repo(segments)
        if not rest or rest[0] != "resolve" or len(rest) < 3:
            raise _HubError(404, None, "Not Found")
        hostile = self.hub.faults.find("bad_commit", self.command, unquote(path))
        with self.hub._lock:
            if hostile is not None and unquote(rest[1]) == hostile.value:
                commit, file_path = repo.commits[repo.branches["main"]], unquote("/".join(rest[2:]))
            else:
                commit, file_path = self._split_rev(repo, rest[1:], need_path=True)
        faults = self.hub.faults.take(self.command, unquote(path), file_path)
        self._faults = faults
        if fault := faults.get("fail_500"):
            raise _HubError(500, None, f"Internal Error (injected fault #{fault.hits})")
        with self.hub._lock:
            self._check_gate(repo)
        entry = commit.files.get(file_path)
        if entry is None:
            raise _HubError(
                404, "EntryNotFound", f"{file_path} does not exist", {"X-Repo-Commit": commit.sha}
            )

        size = entry.blob.size
        start, end = 0, size - 1
        etag = faults["bad_etag"].value if "bad_etag" in faults else entry.etag
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{etag}"',
            "X-Repo-Commit": hostile.value if hostile is not None and hostile.reset else commit.sha,
        }
        if entry.lfs:
            # The Hub names LFS blobs by sha256 and advertises them with X-Linked-* headers.
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
        if entry.xet_hash:
            headers["X-Xet-Hash"] = entry.xet_hash
            headers["X-Xet-Refresh-Route"] = (
                f"{self.hub.url}/api/models/{repo.repo_id}/xet-read-token/{commit.sha}"
            )
        if fault := faults.get("redirect"):
            return self._send(302, b"", {**headers, "Location": fault.value})
        if lie := faults.get("lie_size"):
            if self.command == "HEAD":
                headers["X-Linked-Size"] = headers["Content-Length"] = str(int(lie.amount))
                return self._start(200, headers)
            # No length: the body ends when the connection closes.
            self.close_connection = True
            headers["Connection"] = "close"
            self._start(200, headers)
            self._send_body(entry.blob.path, 0, size, faults)
            return
        status = 200
        range_header = self.headers.get("Range")
        if range_header and "ignore_range" not in faults:
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                raise _HubError(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(end - start + 1)
        self._start(status, headers)
        if self.command == "HEAD":
            return
        if stall := faults.get("stall"):
            self.hub._stopping.wait(stall.amount)
        self._served_key = (repo.repo_id, file_path)
        self._send_body(entry.blob.path, start, end - start + 1, faults)

    def _send_body(self, path: Path, offset: int, length: int, faults: dict[str, Fault]) -> None:
        drop = faults.get("drop")
        limit = min(length, int(drop.amount)) if drop else length
        with open(path, "rb") as f:
            if "wrong_bytes" in faults or "throttle" in faults:
                self._copy_slowly(f, offset, limit, faults)
            else:
                # Zero-copy: the kernel streams the blob, Python never holds the file.
                sent = 0
                while sent < limit and not self.hub._stopping.is_set():
                    n = os.sendfile(
                        self.connection.fileno(), f.fileno(), offset + sent, min(limit - sent, 1 << 30)
                    )
                    if n == 0:
                        break
                    sent += n
                    self.hub._count_served(self._served_key, n)
        if drop:
            self._abort(reset=drop.reset)

    def _copy_slowly(self, f: BinaryIO, offset: int, limit: int, faults: dict[str, Fault]) -> None:
        throttle = faults.get("throttle")
        rate = throttle.amount if throttle else 0.0
        # Throttled: ~20 writes a second so the rate is smooth even for tiny files.
        chunk = max(1, min(_CHUNK, int(rate / 20))) if rate else _CHUNK
        f.seek(offset)
        started, sent = time.monotonic(), 0
        while sent < limit:
            data = f.read(min(chunk, limit - sent))
            if not data:
                break
            if "wrong_bytes" in faults:
                data = data.translate(_FLIP)
            sent += len(data)
            if rate:
                # Wait *before* writing: the last byte must not arrive before size / rate.
                delay = started + sent / rate - time.monotonic()
                if delay > 0 and self.hub._stopping.wait(delay):
                    return
            self.wfile.write(data)
            self.hub._count_served(self._served_key, len(data))

    def _abort(self, *, reset: bool) -> None:
        """Cut the connection mid-body: a clean FIN (client sees an incomplete body) or an RST."""
        self.close_connection = True
        try:
            if reset:
                # SO_LINGER with a zero timeout turns close() into a TCP reset.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """A single `bytes=` range -> (start, end inclusive), "unsatisfiable", or None to ignore it."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if m is None or not (m[1] or m[2]):
        return None  # multi-range or malformed: serve the whole file, as servers may
    if m[1]:
        start = int(m[1])
        end = min(int(m[2]), size - 1) if m[2] else size - 1
    else:
        start, end = max(0, size - int(m[2])), size - 1
        if int(m[2]) == 0:
            return "unsatisfiable"
    if start >= size or start > end:
        return "unsatisfiable"
    return start, end


# ----------------------------------------------------------------------------- helpers


class _TempPathFactory(Protocol):
    def mktemp(self, basename: str, numbered: bool = True) -> Path: ...


def start_local_hub(tmp_path_factory: _TempPathFactory | None = None) -> LocalHub:
    """A started hub whose storage lives under pytest's tmp dirs (or a private tempdir)."""
    storage = tmp_path_factory.mktemp("localhub") if tmp_path_factory is not None else None
    return LocalHub(storage).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve DIR/org/name/ directories as Hub repos org/name.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--token", action="append", default=[], help="accept this token (user 'alice')")
    args = parser.parse_args(argv)

    # Serve files in place: a demo root may hold GBs that need not be duplicated.
    hub = LocalHub(port=args.port, copy_files=False)
    for token in args.token:
        hub.add_token(token)
    repo_dirs = sorted(p for org in args.root.iterdir() if org.is_dir() for p in org.iterdir() if p.is_dir())
    for repo_dir in repo_dirs:
        files: dict[str, bytes | Path] = {
            p.relative_to(repo_dir).as_posix(): p
            for p in sorted(repo_dir.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(repo_dir).parts
        }
        hub.create_repo(f"{repo_dir.parent.name}/{repo_dir.name}", files)
    hub.start()
    print(f"LocalHub serving {len(repo_dirs)} repos at {hub.url}", flush=True)
    for repo_dir in repo_dirs:
        print(f"  {repo_dir.parent.name}/{repo_dir.name}", flush=True)
    print(f"export HF_ENDPOINT={hub.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
