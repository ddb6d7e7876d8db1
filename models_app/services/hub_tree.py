"""One tree listing instead of a HEAD per file (issue 15 item 4: the fixed cost of each small file).

snapshot_download lists the commit's tree once (and caches it on disk, `trees/<commit>.json`), then calls
hf_hub_download for each file, which asks the Hub for that file's metadata with a HEAD: its ETag (the blob's
name), size and commit. huggingface_hub 2.4 skips that HEAD only for Xet files (`_xet_file_metadata_from_tree_
cache`). For a regular or LFS file at a commit id, the listing already says the same thing: the blob id, or
the LFS sha256 and size, which are exactly what the HEAD's ETag / X-Linked-Etag and size would be. On 200
small files the HEADs were about 40% of the time spent in hf_hub_download (bench, profile in the report).

`install()` wraps huggingface_hub's metadata lookup so that, for such a file, it answers from the cached
listing: the download URL is the file's /resolve URL (its GET follows the same redirects the HEAD would
have, each hop checked by the HTTP guard), the ETag is checked as a HEAD's would be, and Xet files, files
missing from the listing and revisions that are not commit ids go to huggingface_hub as before. A file is a
Xet file when the listing gives its `xetHash`, as the real Hub does; a mirror that drops it has the file
fetched over HTTP, which the Hub serves too (same bytes, same verification, no Xet deduplication). Nothing is
trusted more than before: the listing was checked by the guard when it arrived (hub_guard.check_tree_listing),
and every file is verified against model info's ids after the download.
"""

from __future__ import annotations

from typing import Any

from models_app.services import hub_guard


def metadata_from_listing(
    *, repo_id: str, filename: str, repo_type: str, revision: str, endpoint: str | None, folder: str
) -> tuple[str, str, str, int, None, None] | None:
    """What the HEAD would have answered for a non-Xet file at commit `revision`, or None (make the HEAD)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import hf_hub_url

    if constants.is_offline_mode() or not hub_guard.COMMIT_RE.fullmatch(revision):
        return None
    from huggingface_hub._tree_cache import read_tree_cache

    # Parsed once per commit and kept in memory by huggingface_hub itself.
    entries = read_tree_cache(folder, revision)
    entry = entries.get(filename) if entries else None
    if entry is None or entry.xet_hash is not None:
        return None
    if entry.lfs_sha256 is not None:
        if entry.lfs_size is None:
            return None
        etag, size = entry.lfs_sha256, entry.lfs_size
    else:
        etag, size = entry.blob_id, entry.size
    hub_guard.check_etag(etag, repo_id=repo_id)  # it names the blob, as a HEAD's ETag would
    url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
    return url, etag, revision, int(size), None, None


def _from_listing(lookup: Any) -> Any:
    def metadata(**kwargs: Any) -> Any:
        folder = kwargs.get("tree_cache_folder")
        if folder is not None and not kwargs.get("local_files_only"):
            found = metadata_from_listing(
                repo_id=kwargs["repo_id"],
                filename=kwargs["filename"],
                repo_type=kwargs["repo_type"],
                revision=kwargs["revision"],
                endpoint=kwargs.get("endpoint"),
                folder=str(folder),
            )
            if found is not None:
                return found
        return lookup(**kwargs)

    metadata.wrapped = lookup  # type: ignore[attr-defined]
    return metadata


def install() -> None:
    """Once per process (idempotent)."""
    from huggingface_hub import file_download

    if not hasattr(file_download._get_metadata_or_catch_error, "wrapped"):
        file_download._get_metadata_or_catch_error = _from_listing(file_download._get_metadata_or_catch_error)
