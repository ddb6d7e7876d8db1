"""Small files fetched in one go, a few connections at a time (issue 15 item 4: the fixed cost per file).

snapshot_download hands each file to hf_hub_download, which costs ~5 ms of CPU per file before a byte moves
(argument validation, a FileLock with its logging loop, a umask probe file, a fresh thread-pool hop, the
tree cache lookup, a temporary-file dance): on 200 files of 50 kB the worker spent ~1 s of CPU for 10 MB,
where curl needed 0.17 s (make bench; profile in the dlsmall report). Most of that is per-file machinery a
small file gains nothing from: it has no partial transfer worth resuming and no Xet deduplication to use.

Here, for the files of a pull that are small (<= SMALL_FILE_MAX) and not Xet files, each body is one GET
on a kept-alive connection of hub_direct (a plain HTTP/1.1 exchange under the same guard as huggingface_hub's
client: allowed hosts, header deadlines, ETag checks, cancel and stalls between reads, the current file);
an answer that is not a plain 200 (a redirect, a compressed body) goes through huggingface_hub's own client
as before. The first file alone sizes the rest's connections (`_connections`: as many as cover its wait
for the network, so one or two on a LAN, eight across the internet). Each file is written exactly where and how
hf_hub_download writes it:

- `blobs/<etag>.<8 hex>.incomplete`, under the blob's lock `.locks/models--…/<etag>.lock` (the same flock
  FileLock takes, so hub_resume's rule holds: a partial file seen from inside the lock has no live writer);
  the lock is only tried: a blob another process is writing is left to snapshot_download, which waits;
- hashed as it is written (hub_digest), moved to `blobs/<etag>` with the cache folder's permissions, and
  linked from `snapshots/<sha>/<path>` by the relative link huggingface_hub's `_create_symlink` makes;
- the commit's tree listing comes from the same call snapshot_download makes and is cached where it caches
  it (`trees/<sha>.json`), so the big and Xet files that remain for snapshot_download cost no second call.

Errors are raised as hf_hub_download raises them (an HTTP status through `hf_raise_for_status`, the guard's
DownloadError, a cancel): the attempt fails or retries exactly as before, after its backoff (an error answer
is not asked again at once). Nothing here is trusted more than
before: every file is verified against model info's ids after the transfer (hub_checks.verify_files)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpcore2
import httpx2

from models_app.services import hub_digest
from models_app.services.cache_layout import FileRecord
from models_app.services.hub_direct import DirectClient
from models_app.services.hub_progress import CHUNK_SIZE, READ_BYTES, JobMonitor

log = logging.getLogger(__name__)

# Above this a file goes through snapshot_download: a dropped connection resumes inside the transfer
# (http_get's Range retry, hub_resume), which is worth its per-file cost once a file takes a while.
SMALL_FILE_MAX = 4 << 20
# Connections at most, for a Hub far away (see _connections for how many a pull uses).
CONNECTIONS = 8


def listing(api: Any, repo_id: str, sha: str, repo_dir: Path, *, token: str | bool) -> dict[str, Any]:
    """The commit's files as snapshot_download lists them ({path: TreeCacheEntry}), from its on-disk cache
    or from the Hub, and cached there for snapshot_download (and hub_tree) to read back."""
    from huggingface_hub._tree_cache import TreeCacheEntry, read_tree_cache, write_tree_cache
    from huggingface_hub.hf_api import RepoFile

    folder = str(repo_dir)
    entries = read_tree_cache(folder, sha)
    if entries is not None:
        return entries
    entries = {
        f.path: TreeCacheEntry(
            size=f.size,
            blob_id=f.blob_id,
            lfs_sha256=f.lfs.sha256 if f.lfs is not None else None,
            lfs_size=f.lfs.size if f.lfs is not None else None,
            xet_hash=f.xet_hash,
        )
        for f in api.list_repo_tree(repo_id=repo_id, recursive=True, revision=sha, token=token)
        if isinstance(f, RepoFile)
    }
    write_tree_cache(folder, sha, entries)
    return entries


def small_files(files: list[FileRecord], entries: dict[str, Any]) -> list[FileRecord]:
    """The files fetched here: small, not Xet, and named alike by the listing and by model info (the blob
    name both give; a Hub that contradicts itself is left to huggingface_hub and to verification)."""
    chosen = []
    for spec in files:
        entry = entries.get(spec.path)
        if entry is None or entry.xet_hash is not None or spec.size is None or spec.size > SMALL_FILE_MAX:
            continue
        etag = entry.lfs_sha256 if entry.lfs_sha256 is not None else entry.blob_id
        if spec.etag and etag == spec.etag:
            chosen.append(spec)
    return chosen


@dataclass(frozen=True)
class Batch:
    """One pull's small files: where they go and how to ask for them."""

    repo_id: str
    sha: str
    root: Path  # the cache root (huggingface_hub's cache_dir)
    repo_dir: Path
    token: str | bool
    endpoint: str
    monitor: JobMonitor
    force: bool = False


def fetch(batch: Batch, files: list[FileRecord]) -> set[str]:
    """Fetch `files` (from `small_files`) into the cache; the paths now in the snapshot. A file whose blob
    another process is writing is left out (snapshot_download fetches or waits for it). The first error stops
    the files not started and is raised once the running ones end."""
    if not files:
        return set()
    from huggingface_hub.file_download import _create_cachedir_tag, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    (batch.repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    _create_cachedir_tag(batch.root)
    headers = build_hf_headers(token=batch.token)
    context = _Context(
        batch=batch,
        session=get_session(),
        headers=headers,
        mode=_blob_mode(batch.repo_dir / "blobs"),
        direct=DirectClient.for_endpoint(batch.endpoint, headers, stall=batch.monitor.stall_timeout),
        url=hf_hub_url(batch.repo_id, "-", revision=batch.sha, endpoint=batch.endpoint)[:-1],
        blobs=os.path.abspath(batch.repo_dir / "blobs"),
        snapshot=os.path.abspath(batch.repo_dir / "snapshots" / batch.sha),
        locks=os.path.abspath(batch.root / ".locks" / batch.repo_dir.name),
    )
    try:
        done, rest, connections = _first_fetched(context, files)
        if rest:
            done |= _fetch_all(context, rest, connections)
    finally:
        if context.direct is not None:
            context.direct.close()
    return done


def _first_fetched(context: _Context, files: list[FileRecord]) -> tuple[set[str], list[FileRecord], int]:
    """Files one after another up to the first that needs fetching (those already in the snapshot,
    config.json for one, cost no request): how long that one took against how much of it kept this thread
    busy sizes the pool for the rest. Returns the paths done, the rest, and the connections."""
    batch = context.batch
    done: set[str] = set()
    for i, spec in enumerate(files):
        present = not batch.force and (batch.repo_dir / "snapshots" / batch.sha / spec.path).exists()
        started, cpu = time.perf_counter(), time.thread_time()
        if _fetch_one(context, spec):
            done.add(spec.path)
        if not present:
            took, busy = time.perf_counter() - started, time.thread_time() - cpu
            return done, files[i + 1 :], _connections(took, busy, batch.repo_id)
    return done, [], CONNECTIONS


def _connections(took: float, busy: float, repo_id: str) -> int:
    """Enough connections that a file's wait for the network (the Hub's answer, a slow body) is covered by
    the others' work: a Hub across the internet (tens of ms a file, a fraction of a ms of it CPU) gets
    CONNECTIONS; one on this machine or the LAN, where a file costs about as much CPU as it waits, gets one or
    two. More threads than that only fight over the GIL: 200 files of 50 kB from the local Hub took 250 ms of
    CPU on one connection and 390 ms on eight, for no gain in time (2 cores; the issue-15 note)."""
    connections = max(1, min(CONNECTIONS, math.ceil(took / max(busy, 1e-4))))
    log.info(
        "%s: small files over %d connection(s) (the first took %.1f ms, %.1f ms of it CPU)",
        repo_id,
        connections,
        took * 1000,
        busy * 1000,
    )
    return connections


def _fetch_all(context: _Context, files: list[FileRecord], connections: int) -> set[str]:
    """`connections` threads, each taking the next file until none is left or one fails: then the others
    finish the file they hold and the first error is raised."""
    todo = iter(files)
    taking = threading.Lock()
    done: set[str] = set()
    errors: list[BaseException] = []

    def work() -> None:
        while not errors:
            with taking:
                spec = next(todo, None)
            if spec is None:
                return
            try:
                if _fetch_one(context, spec):
                    done.add(spec.path)
            except BaseException as exc:
                errors.append(exc)

    threads = [
        threading.Thread(target=work, name=f"hub-batch-{n}", daemon=True)
        for n in range(min(connections, len(files)) - 1)
    ]
    for thread in threads:
        thread.start()
    work()  # this thread takes its share too
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return done


@dataclass(frozen=True)
class _Context:
    batch: Batch
    session: Any  # huggingface_hub's httpx2 client: the guarded transport
    headers: dict[str, str]
    mode: int | None  # permissions for new blobs, as _chmod_and_move gives them
    direct: DirectClient | None  # plain 200s on kept-alive connections (hub_direct)
    url: str  # a file's URL without its quoted path, as hf_hub_url writes it
    # As strings: pathlib's joins cost more than the syscalls they name, 200 files at a time.
    blobs: str
    snapshot: str
    locks: str


def _blob_mode(blobs: Path) -> int | None:
    """What `_chmod_and_move` gives every blob, probed once per pull instead of once per file: the mode a new
    file gets in the blobs folder (the process umask cannot be read thread-safely)."""
    probe = blobs / f"tmp_{uuid.uuid4()}"
    try:
        probe.touch()
        return stat.S_IMODE(probe.stat().st_mode)
    except OSError:
        return None
    finally:
        probe.unlink(missing_ok=True)


def _fetch_one(context: _Context, spec: FileRecord) -> bool:
    """One file into the snapshot; False when another process holds its blob's lock."""
    batch = context.batch
    batch.monitor.check()
    blob = os.path.join(context.blobs, spec.etag)
    pointer = os.path.join(context.snapshot, spec.path)
    if not batch.force and os.path.exists(pointer):
        batch.monitor.on_files(1)
        return True
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    with _blob_lock(context, spec.etag) as locked:
        if not locked:
            return False
        if batch.force or not os.path.exists(blob):
            _download(context, spec, blob)
        _link(blob, pointer)
    batch.monitor.on_files(1)
    return True


def _link(blob: str, pointer: str) -> None:
    """The snapshot entry, a relative link to the blob, as huggingface_hub's `_create_symlink` makes it
    (replacing what was there), without its per-call probes (a test of symlink support, realpaths): a
    third of this module's CPU per small file. Where links cannot be made, its own fallback (a copy)."""
    target = os.path.relpath(blob, os.path.dirname(pointer))
    try:
        try:
            os.symlink(target, pointer)
        except FileExistsError:
            os.remove(pointer)
            os.symlink(target, pointer)
    except OSError:
        from huggingface_hub.file_download import _create_symlink

        _create_symlink(blob, pointer, new_blob=False)


@contextlib.contextmanager
def _blob_lock(context: _Context, etag: str) -> Iterator[bool]:
    """huggingface_hub's lock of this blob (`.locks/models--…/<etag>.lock`, flock: FileLock's backend, which
    leaves the file in place), tried once: yields whether this process holds it."""
    lock = os.path.join(context.locks, f"{etag}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
    except FileNotFoundError:  # the first blob of this repo, or the folder was cleaned away meanwhile
        os.makedirs(context.locks, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the flock


def _download(context: _Context, spec: FileRecord, blob: str) -> None:
    """The body into a process-unique temporary file, hashed as written, then moved to the blob (never a
    partial file left: a failed or cancelled transfer deletes it, as huggingface_hub does)."""
    batch = context.batch
    url = context.url + quote(spec.path)
    size = int(spec.size or 0)
    kind = hub_digest.SHA256 if spec.sha256 else hub_digest.GIT_SHA1
    tmp = f"{blob}.{uuid.uuid4().hex[:8]}.incomplete"
    try:
        with open(tmp, "wb") as f:
            hashed = hub_digest.HashingFile(f, kind, size)
            try:
                try:
                    _fetch_body(context, url, hashed, size, lfs=bool(spec.sha256))
                except (httpx2.ReadTimeout, httpcore2.ReadTimeout):
                    # The read timeout is DOWNLOAD_STALL_TIMEOUT (hub_progress.install_http_guard, hub_direct):
                    # what snapshot_download reports when it retries such a file, said at once.
                    batch.monitor.stalled()
                    raise
                hashed.record()
            finally:
                hashed.close_hasher()
        if context.mode is not None:
            os.chmod(tmp, context.mode)
        os.replace(tmp, blob)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fetch_body(context: _Context, url: str, out: hub_digest.HashingFile, size: int, *, lfs: bool) -> None:
    """GET url into out: on the direct connection when its answer is a plain 200, else through
    huggingface_hub's client, whose redirects, retries and errors are the reference (hub_direct)."""
    from huggingface_hub.utils import hf_raise_for_status

    monitor = context.batch.monitor
    body = context.direct.get(url, monitor, lfs=lfs) if context.direct is not None else None
    if body is not None:
        with contextlib.closing(body):
            _write_body(iter(lambda: body.read(READ_BYTES), b""), out, size, monitor)
        return
    with context.session.stream("GET", url, headers=context.headers) as response:
        hf_raise_for_status(response)
        _write_body(response.iter_bytes(CHUNK_SIZE), out, size, monitor)


def _write_body(chunks: Iterable[bytes], out: hub_digest.HashingFile, size: int, monitor: JobMonitor) -> None:
    """At most size + 1 bytes: a body longer than announced fails verification (its size) without filling
    the disk first."""
    room = size + 1
    for chunk in chunks:
        if len(chunk) > room:
            chunk = chunk[:room]
        out.write(chunk)
        monitor.on_bytes(len(chunk))
        room -= len(chunk)
        if room <= 0:
            return
