"""Byte-level resume of a file that a killed download left half-written (DESIGN.md, "Downloads", point 7).

huggingface_hub 2.x writes each file to a process-unique `blobs/<etag>.<8 hex>.incomplete`
(`file_download._download_to_tmp_and_move`), resumes only inside one `http_get` call, and never reads a
partial file that another process left behind: after a kill -9 the next attempt started again from byte 0.

`install()` wraps `file_download.http_get`, the one call that receives the open temporary file. Before a
download starts from 0, the wrapper looks for a partial file of the same blob (same etag, same `blobs`
folder) and, if there is one, moves it over the temporary file with one atomic rename and asks http_get to
continue from its size: a `Range` request, and huggingface_hub's own handling of what comes back (206
appends; a server that ignores the range answers 200, and http_get truncates and starts over).

Why the partial file is safe to take: `hf_hub_download` holds the blob's file lock (`.locks/.../<etag>.lock`,
flock) around `_download_to_tmp_and_move`, and a live writer keeps its lock, so any other partial file of
that blob seen from inside the lock belongs to a process that is gone; the rename lets one taker at most
have it. The bytes kept are trusted no more than fresh ones: the whole blob is hashed against the Hub's
metadata before the snapshot is ready (hub_checks.verify_files), as for any download. Xet transfers do not go
through http_get and are not resumed here (hf_xet keeps its own chunk cache).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from models_app.services import hub_digest
from models_app.services.hub_progress import note_resumed

log = logging.getLogger(__name__)

# huggingface_hub's temporary file name (HUB_PROTOCOL.md §5): the etag is a git sha1 or an LFS sha256.
_PARTIAL = re.compile(r"(?P<etag>[0-9a-f]{40}|[0-9a-f]{64})\.[0-9a-f]{8}\.incomplete")


def _leftover(tmp: Path, expected_size: int) -> tuple[Path, int] | None:
    """The largest other partial file of the same blob that is not longer than the blob."""
    match = _PARTIAL.fullmatch(tmp.name)
    if match is None or tmp.parent.name != "blobs":
        return None
    best: tuple[Path, int] | None = None
    for candidate in tmp.parent.glob(f"{match['etag']}.*.incomplete"):
        if candidate.name == tmp.name or _PARTIAL.fullmatch(candidate.name) is None:
            continue
        try:
            size = candidate.stat().st_size
        except FileNotFoundError:
            continue
        if 0 < size <= expected_size and (best is None or size > best[1]):
            best = (candidate, size)
    return best


def _resuming(http_get: Any) -> Any:
    def resuming_http_get(
        url: str,
        temp_file: IO[bytes],
        *,
        resume_size: int = 0,
        expected_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        name = getattr(temp_file, "name", None)
        if resume_size or not expected_size or not isinstance(name, str) or temp_file.tell() != 0:
            return http_get(url, temp_file, resume_size=resume_size, expected_size=expected_size, **kwargs)

        def fresh() -> None:  # nothing to resume from: the whole file, hashed as it is written
            return _hashed_get(
                http_get,
                url,
                temp_file,
                hub_digest.hashing(temp_file, expected_size),
                expected_size=expected_size,
                **kwargs,
            )

        found = _leftover(Path(name), expected_size)
        if found is None:
            return fresh()
        leftover, size = found
        try:
            # Atomic: of two takers, one gets the file. The empty file we were handed is replaced; the caller
            # closes its handle and moves (or, on an error, deletes) this path as usual.
            os.replace(leftover, name)
        except FileNotFoundError:
            return fresh()
        # Written now, whatever the old mtime says: verification must hash it (hub_checks.verified_before).
        os.utime(name)
        log.info(
            "resuming %s from byte %d of %d (a partial file left by a stopped download)",
            name,
            size,
            expected_size,
        )
        with open(name, "r+b") as resumed:
            resumed.seek(size)
            note_resumed(urlsplit(url).path, size)
            hashed = hub_digest.hashing_resumed(resumed, size, expected_size)
            return _hashed_get(
                http_get, url, resumed, hashed, resume_size=size, expected_size=expected_size, **kwargs
            )

    resuming_http_get.wrapped = http_get  # type: ignore[attr-defined]
    return resuming_http_get


def _hashed_get(
    http_get: Any, url: str, file: IO[bytes], hashed: hub_digest.HashingFile | None, **kwargs: Any
) -> None:
    """http_get into `file`, through `hashed` when there is one; its digest is recorded once every byte is
    in (never after an error: the caller deletes that file)."""
    if hashed is None:
        return http_get(url, file, **kwargs)
    try:
        http_get(url, hashed, **kwargs)
        hashed.record()
    finally:
        hashed.close_hasher()


def install() -> None:
    """Once per process (idempotent)."""
    from huggingface_hub import file_download

    if not hasattr(file_download.http_get, "wrapped"):
        file_download.http_get = _resuming(file_download.http_get)
