"""huggingface_hub's shared Xet blob store, as the product deletes from it (HUB_PROTOCOL.md §9).

With Xet, the bytes of a file live once at `<cache>/blobs/<2 hex>/<xet hash>` (read-only, with a `.refs`
manifest naming the repo blobs that use it), and a repo's `blobs/<sha256>` is a symlink to that entry. So
deleting "the repo's blob" frees nothing unless the entry goes too, and the entry may only go when no other
repo's blob links to it. huggingface_hub's own helpers (utils/_shared_blobs.py) read the manifest and sweep
an entry nobody references; they are used here rather than a second reading of that format.

- `remove_repo_blob`: unlink a repo blob; if it was a link into the store, sweep that entry.
- `remove_corrupt_entry`: an entry whose bytes failed verification is removed whatever references it, and
  the other repos' links to it are removed too (they would serve the same bad bytes).
- `discard_pull`: what a cancelled or failed pull wrote (its snapshot folder, the blobs only it uses, their
  store entries, an empty repo folder) goes, so nothing of it is left to be imported or to take space.
- `orphaned_entries`: store entries no repo links to any more (cleanup removes them).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.utils import _shared_blobs

log = logging.getLogger(__name__)


def repo_blob(link: Path) -> Path | None:
    """The repo blob a snapshot symlink names (its first hop), or None if `link` is not a symlink."""
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return Path(os.path.normpath(link.parent / target))


def store_entry(blob: Path, cache_root: Path) -> Path | None:
    """The shared-store entry a repo blob links to, or None (a plain blob, or no store)."""
    if not blob.is_symlink():
        return None
    return _shared_blobs.shared_blob_target(blob, cache_root)


def relative(path: Path, cache_root: Path) -> str:
    try:
        return path.relative_to(cache_root).as_posix()
    except ValueError:
        return str(path)


def remove_repo_blob(blob: Path, cache_root: Path) -> int:
    """Unlink a repo blob; a store entry it linked to goes too once no other repo's blob links to it.
    Returns the bytes freed."""
    entry = store_entry(blob, cache_root)
    freed = 0
    try:
        if entry is None and blob.is_file() and not blob.is_symlink():
            freed = blob.stat().st_size
        blob.unlink()
    except FileNotFoundError:
        return 0
    if entry is not None:
        freed += _shared_blobs.sweep_shared_blob(entry, cache_dir=cache_root)
    return freed


def entry_users(entry: Path, cache_root: Path) -> set[Path]:
    """The repo blobs whose symlinks lead to `entry` (from its manifest, checked on disk)."""
    return _shared_blobs._read_valid_manifest_references(entry, cache_root) or set()


def remove_corrupt_entry(entry: Path, cache_root: Path) -> list[Path]:
    """Delete a store entry whose bytes are wrong, its manifest, and every repo blob that links to it.
    Returns the repo folders whose blobs were unlinked."""
    users = entry_users(entry, cache_root)
    for blob in users:
        blob.unlink(missing_ok=True)
    # Read-only file in a writable folder: unlink works without chmod.
    entry.unlink(missing_ok=True)
    Path(f"{entry}.refs").unlink(missing_ok=True)
    log.warning(
        "removed the corrupt shared Xet store entry %s (linked from %d repo blobs)", entry, len(users)
    )
    return sorted({blob.parent.parent for blob in users})


@dataclass
class Discarded:
    files: list[str] = field(default_factory=list)  # paths relative to the cache root
    freed: int = 0


def present(repo_dir: Path) -> frozenset[str]:
    """The blobs and snapshot entries a repo folder holds now (paths relative to it, partial files left out):
    what a pull found there before it started, and must leave alone if it fails."""
    found: set[str] = set()
    for sub in ("blobs", "snapshots"):
        top = repo_dir / sub
        if top.is_dir():
            for path in top.rglob("*"):
                if (path.is_symlink() or path.is_file()) and not path.name.endswith(".incomplete"):
                    found.add(path.relative_to(repo_dir).as_posix())
    return frozenset(found)


def discard_pull(repo_dir: Path, commit_sha: str, *, keep: frozenset[str] = frozenset()) -> Discarded:
    """Remove what a pull of `commit_sha` left in `repo_dir` that no other snapshot folder of the repo uses
    and that was not there before the pull (`keep`, from `present()`: another tool's download of the same
    commit stays): the snapshot entries and their blobs and store entries, refs naming the commit and its tree
    cache (unless the commit was there before), and the repo folder itself if nothing is left. The caller
    makes sure no ready snapshot is this commit and no live job writes to the repo."""
    done = Discarded()
    kept = _blobs_kept(repo_dir, commit_sha, keep)
    _discard_snapshot(repo_dir, commit_sha, keep=keep, kept=kept, done=done)
    if not any(rel.startswith(f"snapshots/{commit_sha}/") for rel in keep):  # the commit was not there before
        _forget_commit(repo_dir, commit_sha)
    snapshots = repo_dir / "snapshots"
    if not keep and (not snapshots.is_dir() or not any(snapshots.iterdir())):
        # Nothing of the repo is left to use: the folder would only show up as an empty repo.
        _discard_repo(repo_dir, kept=kept, done=done)
    return done


def _blobs_kept(repo_dir: Path, commit_sha: str, keep: frozenset[str]) -> set[Path]:
    """The repo's blobs that stay: those there before the pull, and those another snapshot folder uses."""
    kept: set[Path] = {repo_dir / rel for rel in keep if rel.startswith("blobs/")}
    snapshots = repo_dir / "snapshots"
    if snapshots.is_dir():
        for other in snapshots.iterdir():
            if other.name != commit_sha:
                kept.update(b for link in other.rglob("*") if (b := repo_blob(link)) is not None)
    return kept


def _discard_snapshot(
    repo_dir: Path, commit_sha: str, *, keep: frozenset[str], kept: set[Path], done: Discarded
) -> None:
    """The commit's snapshot entries that were not there before, and the blobs (with their store entries)
    nothing else uses."""
    cache_root = repo_dir.parent
    snapshot_dir = repo_dir / "snapshots" / commit_sha
    if not snapshot_dir.is_dir():
        return
    for link in sorted(snapshot_dir.rglob("*"), reverse=True):  # files before their folders
        blob = repo_blob(link)
        if link.relative_to(repo_dir).as_posix() in keep:
            continue
        if blob is not None and blob.parent == repo_dir / "blobs" and blob not in kept:
            done.freed += remove_repo_blob(blob, cache_root)
            done.files.append(relative(blob, cache_root))
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir() and not any(link.iterdir()):
            link.rmdir()
    if not any(snapshot_dir.iterdir()):
        snapshot_dir.rmdir()
        done.files.append(relative(snapshot_dir, cache_root))


def _forget_commit(repo_dir: Path, commit_sha: str) -> None:
    """The commit's tree cache, and the refs that name it."""
    (repo_dir / "trees" / f"{commit_sha}.json").unlink(missing_ok=True)
    refs = repo_dir / "refs"
    for ref in [p for p in refs.rglob("*") if p.is_file()] if refs.is_dir() else []:
        try:
            if ref.read_text().strip() == commit_sha:
                ref.unlink()
        except OSError:
            continue


def _discard_repo(repo_dir: Path, *, kept: set[Path], done: Discarded) -> None:
    """The whole repo folder, its blobs' store entries and its locks."""
    cache_root = repo_dir.parent
    for blob in (repo_dir / "blobs").glob("*") if (repo_dir / "blobs").is_dir() else ():
        if blob not in kept and not blob.name.endswith(".incomplete"):
            done.freed += remove_repo_blob(blob, cache_root)
    shutil.rmtree(repo_dir, ignore_errors=True)
    shutil.rmtree(cache_root / ".locks" / repo_dir.name, ignore_errors=True)
    done.files.append(relative(repo_dir, cache_root))


def orphaned_entries(cache_root: Path) -> dict[Path, int]:
    """Store entries with a manifest that names no existing repo blob any more: {entry: size}."""
    return _shared_blobs.unreferenced_shared_blobs(cache_root)


def remove_orphan(entry: Path, cache_root: Path) -> int:
    """Remove an orphaned entry (re-checked under huggingface_hub's lock); returns the bytes freed."""
    return _shared_blobs.sweep_shared_blob(entry, cache_dir=cache_root)


def summary(cache_root: Path) -> dict[str, int]:
    """The store of one cache root, each entry counted once: {entries, bytes, orphaned_entries,
    orphaned_bytes}. Repo and snapshot sizes count a linked entry in full for every repo that links it."""
    entries = _shared_blobs.shared_store_blob_paths(cache_root)
    orphans = orphaned_entries(cache_root)
    total = 0
    for entry in entries:
        try:
            total += entry.lstat().st_size
        except OSError:
            continue
    return {
        "entries": len(entries),
        "bytes": total,
        "orphaned_entries": len(orphans),
        "orphaned_bytes": sum(orphans.values()),
    }
