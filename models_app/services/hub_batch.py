"""Small files fetched in one go, a few connections at a time (issue 15 item 4: the fixed cost per file).

snapshot_download hands each file to hf_hub_download, which costs ~5 ms of CPU per file before a byte moves
(argument validation, a FileLock with its logging loop, a umask probe file, a fresh thread-pool hop, the
tree cache lookup, a temporary-file dance): on 200 files of 50 kB the worker spent ~1 s of CPU for 10 MB,
where curl needed 0.17 s (make bench; profile in the dlsmall report). Most of that is per-file machinery a
small file gains nothing from: it has no partial transfer worth resuming and no Xet deduplication to use.

Here, for the files of a pull that are small (<= SMALL_FILE_MAX) and not Xet files, each body is one GET
through huggingface_hub's own HTTP client (so through the product's transport guard: allowed hosts, header
deadlines, ETag checks, cancel and stalls between reads, the current file) on a few kept-alive connections,
written exactly where and how hf_hub_download writes it:

- `blobs/<etag>.<8 hex>.incomplete`, under the blob's lock `.locks/models--…/<etag>.lock` (the same flock
  FileLock takes, so hub_resume's rule holds: a partial file seen from inside the lock has no live writer);
  the lock is only tried: a blob another process is writing is left to snapshot_download, which waits;
- hashed as it is written (hub_digest), moved to `blobs/<etag>` with the cache folder's permissions, and
  linked from `snapshots/<sha>/<path>` by huggingface_hub's own `_create_symlink` (relative links);
- the commit's tree listing comes from the same call snapshot_download makes and is cached where it caches
  it (`trees/<sha>.json`), so the big and Xet files that remain for snapshot_download cost no second call.

Errors are raised as hf_hub_download raises them (an HTTP status through `hf_raise_for_status`, the guard's
DownloadError, a cancel): the attempt fails or retries exactly as before. Nothing here is trusted more than
before: every file is verified against model info's ids after the transfer (hub_checks.verify_files)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from models_app.services import hub_digest
from models_app.services.cache_layout import FileRecord
from models_app.services.hub_progress import CHUNK_SIZE, JobMonitor

log = logging.getLogger(__name__)

# Above this a file goes through snapshot_download: a dropped connection resumes inside the transfer
# (http_get's Range retry, hub_resume), which is worth its per-file cost once a file takes a while.
SMALL_FILE_MAX = 4 << 20
# Connections at once. The worker is CPU-bound on small files (Python per request, 2 cores shared with the
# Hub's side in the bench): more threads only add GIL handoffs (bench: 4 no slower than 8, see the report).
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
    from huggingface_hub.file_download import _create_cachedir_tag
    from huggingface_hub.utils import build_hf_headers, get_session

    (batch.repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    _create_cachedir_tag(batch.root)
    context = _Context(
        batch=batch,
        session=get_session(),
        headers=build_hf_headers(token=batch.token),
        mode=_blob_mode(batch.repo_dir / "blobs"),
    )
    done: set[str] = set()
    with ThreadPoolExecutor(max_workers=min(CONNECTIONS, len(files)), thread_name_prefix="hub-batch") as pool:
        futures = {pool.submit(_fetch_one, context, spec): spec for spec in files}
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        finished |= set(wait(pending).done)
        _raise_first(finished)
        done = {futures[f].path for f in finished if not f.cancelled() and f.result()}
    return done


def _raise_first(finished: set[Future[bool]]) -> None:
    for future in finished:
        if not future.cancelled() and (error := future.exception()) is not None:
            raise error


@dataclass(frozen=True)
class _Context:
    batch: Batch
    session: Any  # huggingface_hub's httpx2 client: the guarded transport
    headers: dict[str, str]
    mode: int | None  # permissions for new blobs, as _chmod_and_move gives them


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
    from huggingface_hub.file_download import _create_symlink

    batch = context.batch
    batch.monitor.check()
    blob = batch.repo_dir / "blobs" / spec.etag
    pointer = batch.repo_dir / "snapshots" / batch.sha / spec.path
    if not batch.force and pointer.exists():
        batch.monitor.on_files(1)
        return True
    pointer.parent.mkdir(parents=True, exist_ok=True)
    with _blob_lock(batch, spec.etag) as locked:
        if not locked:
            return False
        if batch.force or not blob.exists():
            _download(context, spec, blob)
        _create_symlink(str(blob), str(pointer), new_blob=False)
    batch.monitor.on_files(1)
    return True


_dirs_made: set[Path] = set()
_dirs_lock = threading.Lock()


@contextlib.contextmanager
def _blob_lock(batch: Batch, etag: str) -> Iterator[bool]:
    """huggingface_hub's lock of this blob (`.locks/models--…/<etag>.lock`, flock: FileLock's backend, which
    leaves the file in place), tried once: yields whether this process holds it."""
    folder = batch.root / ".locks" / batch.repo_dir.name
    with _dirs_lock:
        if folder not in _dirs_made:
            folder.mkdir(parents=True, exist_ok=True)
            _dirs_made.add(folder)
    fd = os.open(folder / f"{etag}.lock", os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the flock


def _download(context: _Context, spec: FileRecord, blob: Path) -> None:
    """The body into a process-unique temporary file, hashed as written, then moved to the blob (never a
    partial file left: a failed or cancelled transfer deletes it, as huggingface_hub does)."""
    from huggingface_hub.file_download import hf_hub_url
    from huggingface_hub.utils import hf_raise_for_status

    batch = context.batch
    url = hf_hub_url(batch.repo_id, spec.path, revision=batch.sha, endpoint=batch.endpoint)
    size = int(spec.size or 0)
    kind = hub_digest.SHA256 if spec.sha256 else hub_digest.GIT_SHA1
    tmp = blob.with_name(f"{spec.etag}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        with open(tmp, "wb") as f:
            hashed = hub_digest.HashingFile(f, kind, size)
            try:
                try:
                    with context.session.stream("GET", url, headers=context.headers) as response:
                        hf_raise_for_status(response)
                        _write_body(response, hashed, size, batch.monitor)
                except httpx2.ReadTimeout:
                    # The client's read timeout is DOWNLOAD_STALL_TIMEOUT (hub_progress.install_http_guard):
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
        tmp.unlink(missing_ok=True)


def _write_body(response: Any, out: hub_digest.HashingFile, size: int, monitor: JobMonitor) -> None:
    """At most size + 1 bytes: a body longer than announced fails verification (its size) without filling
    the disk first."""
    room = size + 1
    for chunk in response.iter_bytes(CHUNK_SIZE):
        if len(chunk) > room:
            chunk = chunk[:room]
        out.write(chunk)
        monitor.on_bytes(len(chunk))
        room -= len(chunk)
        if room <= 0:
            return
