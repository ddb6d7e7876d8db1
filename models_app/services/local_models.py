"""Models converted or trained on this machine, registered by staff from a directory under LOCAL_MODEL_ROOTS.

They are listed, chatted with and served like downloaded ones, but the app never deletes their files: the
directory belongs to whoever made it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from models_app.models import Repository, Snapshot
from models_app.services import hub_checks, model_markers
from models_app.services.cache_layout import CacheError, FileRecord, context_length, read_config
from models_app.services.hub_guard import MetadataError, read_metadata

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_HASH_CHUNK = 8 * 2**20


class LocalModelError(CacheError):
    code = "invalid_local_model"


def _roots() -> dict[str, Path]:
    return {name: Path(path).expanduser().resolve() for name, path in settings.LOCAL_MODEL_ROOTS.items()}


def resolve_inside_roots(path: str | Path) -> tuple[str, Path]:
    """(root name, resolved path) when `path`, with every symlink and `..` resolved, lies inside one of
    LOCAL_MODEL_ROOTS. Checking the resolved path is what makes `root/link -> /etc` and `root/../x` fail."""
    roots = _roots()
    if not roots:
        raise LocalModelError(
            "No local model roots are configured.",
            action="Set LOCAL_MODEL_ROOTS=name=/absolute/dir and put the model directory under it.",
        )
    resolved = Path(path).expanduser().resolve()
    for name, root in roots.items():
        if resolved.is_relative_to(root):
            return name, resolved
    allowed = ", ".join(str(r) for r in roots.values())
    raise LocalModelError(
        f"{path} is not inside a local model root.", action=f"Move or link it under one of: {allowed}."
    )


def checked_local_path(stored: str) -> Path:
    """A registered model's directory, re-checked on every use: the roots may have changed since."""
    return resolve_inside_roots(stored)[1]


def mlx_problem(model_dir: Path) -> str | None:
    """Why mlx-lm could not load this directory, or None: the downloads' own checks (config.json with a
    model_type mlx-lm implements, safetensors weights, tokenizer files), plus every shard the weight index
    names, since a snapshot another tool left half-done has the index but not all the shards."""
    paths = [p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()]
    config = read_config(model_dir) if (model_dir / "config.json").is_file() else None
    problem = hub_checks.mlx_file_problem(paths) or hub_checks.mlx_config_problem(config)
    if problem:
        return problem
    try:
        index = read_metadata(model_dir / "model.safetensors.index.json")
    except MetadataError as exc:
        return exc.reason
    except (OSError, ValueError):
        return None
    shards = set((index.get("weight_map") or {}).values()) if isinstance(index, dict) else set()
    missing = sorted(s for s in shards if not (model_dir / str(s)).is_file())
    return f"weight shards missing: {', '.join(missing[:3])}" if missing else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(model_dir: Path) -> list[FileRecord]:
    """Every regular file (hidden ones excluded), with its sha256: verify_model checks them later."""
    records = []
    for file in sorted(model_dir.rglob("*")):
        rel = file.relative_to(model_dir)
        if file.is_dir() or any(part.startswith(".") for part in rel.parts):
            continue
        # A symlink leading out of the roots would let a later read escape the check done on the directory.
        resolve_inside_roots(file)
        records.append(FileRecord(rel.as_posix(), file.stat().st_size, sha256=_sha256(file)))
    return records


def content_hash(records: list[FileRecord]) -> str:
    """A commit-sha-shaped id of the contents: same files, same id."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.path}\0{record.size}\0{record.sha256}\n".encode())
    return digest.hexdigest()[:40]


def register_local_model(name: str, path: str | Path, *, user: Any) -> Snapshot:
    """Register (or refresh) a local model directory. Staff only. Returns its READY snapshot."""
    if user is None or not user.is_staff:
        raise LocalModelError("Only staff may register local models.")
    if not _NAME_RE.fullmatch(name):
        raise LocalModelError(
            f"{name!r} is not a valid local model name.",
            action="Use letters, digits, '.', '_' or '-' (no '/': names with a slash are Hub repos).",
        )
    root_name, model_dir = resolve_inside_roots(path)
    if not model_dir.is_dir():
        raise LocalModelError(f"{model_dir} is not a directory.")
    problem = mlx_problem(model_dir)
    if problem:
        raise LocalModelError(f"{model_dir} is not an MLX model mlx-lm can load: {problem}.")
    records = file_records(model_dir)
    sha = content_hash(records)
    config = read_config(model_dir)

    with transaction.atomic():
        repo, _ = Repository.objects.select_for_update().get_or_create(
            repo_id=name, defaults={"kind": Repository.Kind.LOCAL, "owner": user}
        )
        if repo.kind != Repository.Kind.LOCAL:
            raise LocalModelError(f"{name!r} is already a Hub repository here.", action="Pick another name.")
        now = timezone.now()
        snapshot, _ = Snapshot.objects.update_or_create(
            repository=repo,
            commit_sha=sha,
            node=settings.NODE_NAME,
            cache_root=root_name,
            defaults={
                "ref": "local",
                "path": str(model_dir),
                "size_bytes": sum(r.size or 0 for r in records),
                "files": [r.as_json() for r in records],
                "status": Snapshot.Status.READY,
                "model_type": str(config.get("model_type", "")),
                "context_length": context_length(config),
                "markers": model_markers.read_markers(model_dir),
                "downloaded_at": now,
                "verified_at": now,
            },
        )
        # The name now means these contents; earlier registrations of it are history.
        Snapshot.objects.filter(repository=repo, node=settings.NODE_NAME).exclude(id=snapshot.id).update(
            status=Snapshot.Status.DELETED, updated_at=now
        )
    return snapshot
