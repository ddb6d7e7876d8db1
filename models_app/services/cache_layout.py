"""The Hugging Face cache layout: where a repo and a snapshot live, what files a snapshot holds, and
huggingface_hub's delete strategies over it (HUB_PROTOCOL.md §6, §8).

Every path the app hands to mlx-lm or deletes is computed here from a cache root *name* and a repo id, never
taken from user input.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from huggingface_hub import CacheNotFound, HFCacheInfo, scan_cache_dir
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils._cache_manager import CachedFileInfo, CachedRepoInfo, CachedRevisionInfo

_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class CacheError(Exception):
    """A cache operation the user asked for cannot be done. `code` is stable (API, CLI exit messages)."""

    code = "cache_error"

    def __init__(self, message: str, *, action: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.action = action

    def __str__(self) -> str:
        return self.message


class UnknownCacheRoot(CacheError):
    code = "unknown_cache_root"


def cache_root_path(name: str) -> Path:
    """The directory of a configured cache root. Roots are chosen by name only, so a request can never
    point the app at an arbitrary directory."""
    try:
        return Path(settings.CACHE_ROOTS[name])
    except (KeyError, TypeError):
        known = ", ".join(sorted(settings.CACHE_ROOTS))
        raise UnknownCacheRoot(
            f"Unknown cache root {name!r}.",
            action=f"Use one of: {known} (HF_EXTRA_CACHE_ROOTS adds more).",
        ) from None


def repo_folder(repo_id: str) -> str:
    """The folder of a model repo in a cache root, `models--org--name` (HUB_PROTOCOL.md §6)."""
    return repo_folder_name(repo_id=repo_id, repo_type="model")


def repo_id_from_folder(folder: str) -> str:
    """`models--org--name` -> `org/name`: the inverse of repo_folder."""
    return folder.split("--", 1)[-1].replace("--", "/")


def repo_path(root: Path, repo_id: str) -> Path:
    return root / repo_folder(repo_id)


def hub_snapshot_path(*, cache_root: str, repo_id: str, commit_sha: str) -> Path:
    if not _SHA1_RE.fullmatch(commit_sha):
        # A commit sha becomes a directory name: refuse anything that could climb out of snapshots/.
        raise CacheError(f"{commit_sha!r} is not a commit sha.")
    return repo_path(cache_root_path(cache_root), repo_id) / "snapshots" / commit_sha


def scan(root: Path) -> HFCacheInfo | None:
    """scan_cache_dir, with a missing root meaning "nothing cached" rather than an error."""
    try:
        return scan_cache_dir(root)
    except CacheNotFound:
        return None


# --- Files of a snapshot --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    """One file of a snapshot as the Hub describes it: LFS files carry a sha256, others a git blob sha1."""

    path: str
    size: int | None
    blob_id: str = ""  # git object id (of the LFS pointer for LFS files)
    sha256: str = ""  # LFS content hash

    @property
    def etag(self) -> str:
        """The blob file name in the cache: sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 or self.blob_id

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size, "blob_id": self.blob_id}
        if self.sha256:
            data["sha256"] = self.sha256
        return data


def file_record(entry: dict[str, Any]) -> FileRecord:
    """Read one `Snapshot.files` entry. Lenient about key names: rows are written by the downloads pipeline,
    reconcile and local registration, and Hub JSON spells the same facts several ways."""
    lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else {}
    return FileRecord(
        path=str(entry.get("path") or entry.get("rfilename") or ""),
        size=entry.get("size"),
        blob_id=str(entry.get("blob_id") or entry.get("oid") or entry.get("blobId") or ""),
        sha256=str(
            entry.get("sha256") or entry.get("lfs_sha256") or lfs.get("sha256") or lfs.get("oid") or ""
        ),
    )


def read_tree(repo_dir: Path, commit_sha: str) -> dict[str, dict[str, Any]]:
    """`trees/{sha}.json`, written by snapshot_download: path -> {size, blob_id, lfs_sha256?}. {} if absent."""
    try:
        data = json.loads((repo_dir / "trees" / f"{commit_sha}.json").read_text())
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_file_records(snapshot_dir: Path) -> list[FileRecord]:
    """What a cached snapshot holds, from the cache alone: the tree listing when snapshot_download left one,
    otherwise the blob names (a 64-hex blob is an LFS sha256, a 40-hex one a git sha1). Broken symlinks are
    left out: their file is missing."""
    repo_dir = snapshot_dir.parent.parent
    tree = read_tree(repo_dir, snapshot_dir.name)
    records = []
    for file in sorted(snapshot_dir.rglob("*")):
        if file.is_dir() or not file.exists():
            continue
        rel = file.relative_to(snapshot_dir).as_posix()
        blob_name = Path(os.readlink(file)).name if file.is_symlink() else ""
        listed = tree.get(rel, {})
        sha256 = listed.get("lfs_sha256") or (blob_name if _SHA256_RE.fullmatch(blob_name) else "")
        blob_id = listed.get("blob_id") or (blob_name if _SHA1_RE.fullmatch(blob_name) else "")
        records.append(FileRecord(rel, file.stat().st_size, blob_id, sha256))
    return records


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json, or {} if missing, unreadable, too big or nested too deep (hub_guard.read_metadata);
    reconcile reports those two before it gets here."""
    from models_app.services.hub_guard import MetadataError, read_metadata

    try:
        config = read_metadata(model_dir / "config.json", "config.json")
    except (OSError, ValueError, MetadataError):
        return {}
    return config if isinstance(config, dict) else {}


def context_length(config: dict[str, Any]) -> int | None:
    """The model's context window as its config.json states it, or None. The one reading used by the pull,
    the cache import, the plan and the engine, so a model records the same limit whichever way it arrived.
    Multimodal configs keep the language model's figures in `text_config`."""
    nested = config.get("text_config")
    for source in (config, nested if isinstance(nested, dict) else {}):
        for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


# --- Deleting with huggingface_hub's strategies ------------------------------------------------------------


def repo_cache_info(root: Path, repo_id: str, info: HFCacheInfo | None = None) -> HFCacheInfo | None:
    """A one-repo HFCacheInfo to compute a delete strategy from, or None when the repo is not cached.

    scan_cache_dir skips a whole repo when one symlink is broken (a blob vanished); such a repo is rebuilt here
    from its readable files so its revisions can still be deleted with huggingface_hub's own logic."""
    folder = repo_path(root, repo_id)
    if info is not None:
        for repo in info.repos:
            if repo.repo_type == "model" and repo.repo_id == repo_id:
                return _only(repo, info.cache_dir)
    if not (folder / "snapshots").is_dir():
        return None
    refs = _refs_by_commit(folder)
    revisions = set()
    for snap in (folder / "snapshots").iterdir():
        if not snap.is_dir():
            continue
        files = _readable_files(snap)
        revisions.add(
            CachedRevisionInfo(
                commit_hash=snap.name,
                snapshot_path=snap,
                size_on_disk=sum({f.blob_path: f.size_on_disk for f in files}.values()),
                files=frozenset(files),
                refs=frozenset(refs.get(snap.name, ())),
                last_modified=0.0,
            )
        )
    repo = CachedRepoInfo(
        repo_id=repo_id,
        repo_type="model",
        repo_path=folder,
        size_on_disk=0,
        nb_files=0,
        revisions=frozenset(revisions),
        last_accessed=0.0,
        last_modified=0.0,
    )
    return _only(repo, root)


def _only(repo: CachedRepoInfo, cache_dir: Path | None) -> HFCacheInfo:
    return HFCacheInfo(
        size_on_disk=0,
        repos=frozenset({repo}),
        incomplete_files=frozenset(),
        warnings=[],
        cache_dir=cache_dir,
    )


def _refs_by_commit(folder: Path) -> dict[str, set[str]]:
    refs: dict[str, set[str]] = defaultdict(set)
    for ref in (folder / "refs").glob("**/*"):
        if ref.is_file():
            refs[ref.read_text().strip()].add(ref.relative_to(folder / "refs").as_posix())
    return refs


def _readable_files(snap: Path) -> set[CachedFileInfo]:
    """A snapshot folder's files whose blob exists (a missing one has nothing to free, and the snapshot folder
    goes anyway)."""
    files = set()
    for file in snap.glob("**/*"):
        if file.is_symlink():
            blob = Path(os.path.abspath(file.parent / os.readlink(file)))
        elif file.is_file():
            blob = file
        else:
            continue
        if not blob.exists():
            continue
        stat = blob.stat()
        files.add(
            CachedFileInfo(
                file_name=file.name,
                file_path=file,
                blob_path=blob,
                size_on_disk=stat.st_size,
                blob_last_accessed=stat.st_atime,
                blob_last_modified=stat.st_mtime,
            )
        )
    return files


def cached_shas(repo_info: HFCacheInfo | None) -> set[str]:
    if repo_info is None:
        return set()
    return {rev.commit_hash for repo in repo_info.repos for rev in repo.revisions}


def marginal_freed(repo_info: HFCacheInfo | None, shas: Sequence[str]) -> list[int]:
    """Bytes each revision frees when deleted in this order together with the ones before it: a blob shared
    by two planned revisions counts once, on the last of them. Sums to the strategy's total."""
    present = cached_shas(repo_info)
    freed, done, chosen = [], 0, []
    for sha in shas:
        if repo_info is None or sha not in present:
            freed.append(0)
            continue
        chosen.append(sha)
        total = repo_info.delete_revisions(*chosen).expected_freed_size
        freed.append(total - done)
        done = total
    return freed


def execute_delete(repo_info: HFCacheInfo | None, shas: Iterable[str]) -> int:
    present = [sha for sha in shas if sha in cached_shas(repo_info)]
    if repo_info is None or not present:
        return 0
    strategy = repo_info.delete_revisions(*present)
    strategy.execute()
    return strategy.expected_freed_size
