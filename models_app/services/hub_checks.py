"""The checks around a download: what files it needs, whether they fit on disk, whether mlx-lm can load the
repo, and whether what landed in the cache is what the Hub described (LFS files by sha256, the others by
size and git blob sha1)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models_app.services import hub_digest
from models_app.services.cache_layout import FileRecord
from models_app.services.errors import DISK_FULL, INTEGRITY, NOT_MLX, DownloadError
from models_app.services.hub_guard import Resolver
from models_app.services.validation import safe_relpath

HASH_CHUNK = 8 * 1024 * 1024
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tiktoken.model",
    "vocab.json",
    "tokenizer_config.json",
)
_MODEL_TYPE_RE = re.compile(r"[a-z0-9_]{1,64}")


def plan_files(siblings: Iterable[Any]) -> list[FileRecord]:
    """FileRecords from model_info(files_metadata=True).siblings. Paths are checked: they become file names."""
    files = []
    for sibling in siblings:
        lfs = getattr(sibling, "lfs", None)
        sha256 = (getattr(lfs, "sha256", None) or "") if lfs is not None else ""
        size = getattr(lfs, "size", None) if lfs is not None else None
        size = size if size is not None else sibling.size
        blob_id = sibling.blob_id or ""
        # Ids name blobs in the cache (FileRecord.etag): a malformed one must not become a path.
        if blob_id and not re.fullmatch(r"[0-9a-f]{40}", blob_id):
            raise DownloadError(INTEGRITY, f"Refused: the Hub answered an invalid file id {blob_id[:80]!r}.")
        if sha256 and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise DownloadError(
                INTEGRITY, f"Refused: the Hub answered an invalid LFS sha256 {sha256[:80]!r}."
            )
        files.append(FileRecord(safe_relpath(sibling.rfilename), int(size or 0), blob_id, sha256))
    return files


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the cache root may not exist yet
    return shutil.disk_usage(probe).free


def check_disk(root: Path, *, needed: int, reserve: int) -> None:
    """Refuse before writing a byte when the download would eat into the reserve."""
    if needed <= 0:
        return
    free = free_bytes(root)
    if free < needed + reserve:
        raise DownloadError(
            DISK_FULL,
            f"Not enough free disk space in {root}: the download needs {human(needed)} plus a reserve of "
            f"{human(reserve)} (DOWNLOAD_DISK_RESERVE), but only {human(free)} is free.",
        )


def mlx_file_problem(paths: list[str]) -> str | None:
    """What is missing from the file list for mlx-lm to load the repo, or None."""
    names = {p.rsplit("/", 1)[-1] for p in paths if "/" not in p}
    if "config.json" not in names:
        return "it has no config.json"
    if not any(p.endswith(".safetensors") for p in paths):
        if any(p.endswith((".gguf", ".bin", ".pt", ".pth", ".ckpt")) for p in paths):
            return "its weights are not in safetensors format (GGUF or PyTorch files only)"
        return "it has no *.safetensors weights"
    if not names.intersection(TOKENIZER_FILES):
        return "it has no tokenizer files"
    return None


WEIGHT_INDEX = "model.safetensors.index.json"


def _index_shards(snapshot_dir: Path | None) -> set[str] | None:
    """The shard files model.safetensors.index.json names, or None when it cannot be read."""
    if snapshot_dir is None:
        return None
    try:
        weight_map = json.loads((snapshot_dir / WEIGHT_INDEX).read_text()).get("weight_map")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(weight_map, dict):
        return None
    return {v for v in weight_map.values() if isinstance(v, str) and v}


def mlx_missing(
    held: Iterable[str], repo_paths: Iterable[str], snapshot_dir: Path | None = None
) -> list[str]:
    """What a snapshot holding `held` lacks for mlx-lm to load it, given the commit's files `repo_paths`:
    config.json, the weights (the shards its index names, else every top-level *.safetensors) and the
    tokenizer files the repo has. Empty: it is complete enough to chat with."""
    held = set(held)
    repo = set(repo_paths) | held
    top = {p for p in repo if "/" not in p}
    needed = {"config.json"}
    shards = _index_shards(snapshot_dir) if WEIGHT_INDEX in held else None
    weights = shards if shards else {p for p in top if p.endswith(".safetensors")}
    needed |= weights or {"*.safetensors"}
    tokenizer = top.intersection(TOKENIZER_FILES)
    needed |= tokenizer or {"tokenizer.json"}
    return sorted(needed - held)


def mlx_config_problem(config: Any) -> str | None:
    """Whether mlx-lm has an architecture for config.json's model_type (as mlx_lm.utils._get_classes
    resolves it), or what is wrong."""
    if not isinstance(config, dict):
        return "its config.json is not a JSON object"
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return "its config.json has no model_type"
    from mlx_lm import utils as mlx_utils

    module = model_type
    architectures = config.get("architectures") or ()
    if isinstance(architectures, str):
        architectures = (architectures,)
    remap_arch = getattr(mlx_utils, "MODEL_ARCHITECTURE_REMAPPING", {})
    for architecture in architectures if isinstance(architectures, list | tuple) else ():
        if (model_type, architecture) in remap_arch:
            module = remap_arch[(model_type, architecture)]
            break
    else:
        module = mlx_utils.MODEL_REMAPPING.get(model_type, model_type)
    if not _MODEL_TYPE_RE.fullmatch(module):
        return f"mlx-lm does not support the model type {model_type[:64]!r}"
    try:
        arch = importlib.import_module(f"mlx_lm.models.{module}")
    except ImportError:
        return f"mlx-lm does not support the model type {model_type!r}"
    if not (hasattr(arch, "Model") and hasattr(arch, "ModelArgs")):
        return f"mlx-lm does not support the model type {model_type!r}"
    return None


def not_mlx(repo_id: str, why: str) -> DownloadError:
    return DownloadError(
        NOT_MLX, f"{repo_id} is not an MLX model that mlx-lm can load: {why}.", repo_id=repo_id
    )


# --- Verification -----------------------------------------------------------------------------------------


def file_hash(path: Path, size: int, *, git_sha1: bool, check: Callable[[], None] = lambda: None) -> str:
    """sha256 of a file (how the Hub names LFS blobs), or its git blob sha1 (regular files). Only the one that
    is checked: hashing both cost 1.6 s/GB against 1.0 s/GB for sha256 alone (measured by make bench).
    `check` runs between chunks (cancel)."""
    digest = hashlib.sha1(b"blob %d\0" % size) if git_sha1 else hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            check()
    return digest.hexdigest()


class _NeedsReading(Exception):
    """A file whose digest only its bytes can give (verify_files reads those on its pool)."""


def _digest(
    blob: Path, size: int, *, git_sha1: bool, just_written: bool, check: Callable[[], None], read: bool
) -> str:
    if just_written:
        hub_digest.await_following(blob, check)  # a Xet file's hasher may still have its tail to do
        if (known := hub_digest.known_digest(blob, git_sha1=git_sha1)) is not None:
            return known  # hashed as it was written, and not written since (hub_digest)
    if not read:
        raise _NeedsReading
    return file_hash(blob, size, git_sha1=git_sha1, check=check)


@dataclass
class _FileCheck:
    """One snapshot's files against the Hub's ids."""

    snapshot_dir: Path
    skip: Callable[[FileRecord, Path], bool]
    check: Callable[[], None]
    just_written: bool
    resolve: Resolver = field(default_factory=Resolver)  # the snapshot's links, its folders resolved once

    def problem(self, spec: FileRecord, *, read: bool = True) -> str | None:
        """What is wrong with one file (None: nothing). `read=False`: raises _NeedsReading instead of
        hashing its bytes."""
        blob = Path(self.resolve(str(self.snapshot_dir / spec.path)))
        try:
            found = blob.stat()
        except OSError:
            return "missing"
        if not stat.S_ISREG(found.st_mode):
            return "missing"
        size = found.st_size
        if size != spec.size:
            return f"size {size} instead of {spec.size}"
        if self.skip(spec, blob):
            return None
        if not (spec.sha256 or spec.blob_id):
            return None
        git_sha1 = not spec.sha256
        digest = _digest(
            blob, size, git_sha1=git_sha1, just_written=self.just_written, check=self.check, read=read
        )
        if digest == (spec.blob_id if git_sha1 else spec.sha256):
            return None
        return "git blob sha1 differs from the Hub's" if git_sha1 else "sha256 differs from the Hub's"


def verify_files(
    repo_dir: Path,
    commit_sha: str,
    files: list[FileRecord],
    *,
    skip: Callable[[FileRecord, Path], bool] = lambda spec, blob: False,
    check: Callable[[], None] = lambda: None,
    just_written: bool = False,
) -> dict[str, str]:
    """Check every file of a downloaded snapshot; returns {path: problem}. A bad file's blob and snapshot
    symlink are deleted, so the next pull fetches it again instead of trusting the cache. `just_written`:
    right after this process downloaded them, so a digest hub_digest recorded while a blob was written stands
    for it as long as the blob is unchanged since (any other check, e.g. for bit rot, reads the bytes)."""
    snapshot_dir = repo_dir / "snapshots" / commit_sha
    blobs_dir = (repo_dir / "blobs").resolve()
    checker = _FileCheck(snapshot_dir, skip, check, just_written)
    results: list[tuple[FileRecord, str | None]] = []
    to_read = files
    if just_written:
        # Most digests were taken as the bytes were written: those files need a stat, not a thread (a pool
        # of 4 took 55 ms for 200 small files where this loop takes 18).
        to_read = []
        for spec in files:
            try:
                results.append((spec, checker.problem(spec, read=False)))
            except _NeedsReading:
                to_read.append(spec)
    if to_read:
        workers = min(4, os.cpu_count() or 1, len(to_read))
        with ThreadPoolExecutor(max_workers=workers) as pool:  # hashlib releases the GIL
            results += pool.map(lambda spec: (spec, checker.problem(spec)), to_read)
    problems: dict[str, str] = {}
    for spec, problem in results:
        if problem is None:
            continue
        link = snapshot_dir / spec.path
        blob = link.resolve() if link.exists() else None
        if blob is not None and blob.parent == blobs_dir:
            blob.unlink(missing_ok=True)
        elif note := discard_shared_blob(repo_dir, link, spec):
            problem = f"{problem}; {note}"
        problems[spec.path] = problem
        if link.is_symlink() or link.exists():
            link.unlink(missing_ok=True)
    return problems


def discard_shared_blob(repo_dir: Path, link: Path, spec: FileRecord) -> str:
    """A bad file whose bytes sit in the shared Xet store: deleting only the repo's link would let every later
    pull link the same bad entry again. The entry goes, with every repo's link to it; the other repos'
    snapshots that listed the file are marked invalid. Returns what was done, for the error message."""
    from models_app.models import Snapshot
    from models_app.services import shared_store

    blob = shared_store.repo_blob(link)
    entry = shared_store.store_entry(blob, repo_dir.parent) if blob is not None else None
    if blob is None or entry is None:
        return ""
    folders = [f for f in shared_store.remove_corrupt_entry(entry, repo_dir.parent) if f != repo_dir]
    blob.unlink(missing_ok=True)
    invalid = 0
    for folder in folders:
        for snapshot in Snapshot.objects.filter(
            path__startswith=f"{folder}/snapshots/", status=Snapshot.Status.READY
        ):
            if any(
                isinstance(e, dict) and spec.etag in (e.get("sha256"), e.get("blob_id"))
                for e in snapshot.files
            ):
                Snapshot.objects.filter(id=snapshot.id).update(status=Snapshot.Status.INVALID)
                invalid += 1
    where = shared_store.relative(entry, repo_dir.parent)
    others = (
        f"; {len(folders)} other cached repo(s) linked to it ({invalid} snapshot(s) marked invalid)"
        if folders
        else ""
    )
    return f"the local shared Xet store entry {where} holding these bytes was corrupt and was deleted{others}"


def verified_before(repository_id: int, *, node: str, cache_root: str) -> Callable[[FileRecord, Path], bool]:
    """Hashing a multi-GB blob again on every no-op pull is waste: skip a blob that a ready snapshot of this
    repo listed with the same id and that has not been written since that snapshot was verified."""
    from models_app.models import Snapshot

    verified: dict[str, float] = {}
    ready = Snapshot.objects.filter(
        repository_id=repository_id,
        node=node,
        cache_root=cache_root,
        status=Snapshot.Status.READY,
        verified_at__isnull=False,
    ).values_list("files", "verified_at")
    for files, verified_at in ready:
        for entry in files or []:
            etag = (entry.get("sha256") or entry.get("blob_id")) if isinstance(entry, dict) else None
            if etag:
                verified[etag] = max(verified.get(etag, 0.0), verified_at.timestamp())

    def skip(spec: FileRecord, blob: Path) -> bool:
        stamp = verified.get(spec.etag)
        return stamp is not None and blob.name == spec.etag and blob.stat().st_mtime < stamp

    return skip


def integrity_error(repo_id: str, problems: dict[str, str]) -> DownloadError:
    listed = "; ".join(f"{path}: {why}" for path, why in sorted(problems.items())[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return DownloadError(
        INTEGRITY,
        f"{len(problems)} file(s) of {repo_id} did not match the Hub's checksums and were deleted: {listed}{more}.",
        repo_id=repo_id,
    )


def write_ref(repo_dir: Path, revision: str, commit_sha: str) -> None:
    """refs/<revision> -> sha, atomically (a reader never sees an empty ref). The revision was validated:
    it cannot climb out of refs/."""
    if revision == commit_sha:
        return
    ref = repo_dir / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit_sha)
    os.replace(tmp, ref)
