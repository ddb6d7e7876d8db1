"""Update checks: has the tracked ref of a pulled repo moved on the Hub, what changed, and what would a pull
fetch. Metadata only (one model-info call per repo, plus tokenizer_config.json when it changed, read into a
temporary directory, never into the cache where reconcile would find a half-made snapshot)."""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.utils import timezone

from models_app.models import DownloadJob, HubCredential, Repository, Snapshot
from models_app.services import hub_guard, visibility
from models_app.services.cache import newest_first, snapshot_path
from models_app.services.cache_layout import (
    CacheError,
    FileRecord,
    cache_root_path,
    cached_file_records,
    file_record,
    repo_path,
)
from models_app.services.hub_guard import metadata_download, read_metadata

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, TOKENIZER, CHAT_TEMPLATE, OTHER = "weights", "config", "tokenizer", "chat_template", "other"
_WEIGHT_SUFFIXES = (".safetensors", ".npz", ".bin", ".safetensors.index.json")
_CONFIG_FILES = {"config.json", "generation_config.json"}
_TOKENIZER_FILES = {
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "tiktoken.model",
}
_SHA_RE = re.compile(r"[0-9a-f]{40}")


def categorize(path: str) -> str:
    name = PurePosixPath(path).name
    if name.endswith(_WEIGHT_SUFFIXES):
        return WEIGHTS
    if name in ("chat_template.jinja", "chat_template.json") or path.startswith("additional_chat_templates/"):
        return CHAT_TEMPLATE
    if name in _CONFIG_FILES:
        return CONFIG
    if name in _TOKENIZER_FILES:
        return TOKENIZER
    return OTHER


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # added | modified | removed
    categories: tuple[str, ...]
    size: int  # remote size (0 when removed)
    cached: bool  # its blob is already in the cache: nothing to fetch


@dataclass
class UpdateInfo:
    repo_id: str
    ref: str
    local_sha: str
    remote_sha: str = ""
    update_available: bool = False
    changes: list[FileChange] = field(default_factory=list)
    bytes_to_fetch: int = 0
    error_code: str = ""
    error: str = ""

    @property
    def categories(self) -> list[str]:
        return sorted({c for change in self.changes for c in change.categories})

    def summary(self) -> dict[str, Any]:
        """What Repository.update_summary stores: enough for the models page to say what changed."""
        changed: dict[str, list[str]] = {}
        for change in self.changes:
            for category in change.categories:
                changed.setdefault(category, []).append(change.path)
        return {
            "ref": self.ref,
            "local_sha": self.local_sha,
            "remote_sha": self.remote_sha,
            "categories": self.categories,
            "changed": changed,
            "added": [c.path for c in self.changes if c.change == "added"],
            "removed": [c.path for c in self.changes if c.change == "removed"],
            "bytes_to_fetch": self.bytes_to_fetch,
        }

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "categories": self.categories}


def _remote_identity(sibling: Any) -> tuple[str, str]:
    """(sha256, git blob id) of a model-info sibling."""
    lfs = getattr(sibling, "lfs", None)
    return (getattr(lfs, "sha256", "") or "") if lfs else "", sibling.blob_id or ""


def _same(local: FileRecord, sibling: Any) -> bool:
    sha256, blob_id = _remote_identity(sibling)
    if local.sha256 and sha256:
        return local.sha256 == sha256
    if local.blob_id and blob_id:
        return local.blob_id == blob_id
    return local.size == sibling.size  # nothing better recorded: a changed size at least is a change


def _tokenizer_config_change(
    local_dir: Path | None, repo_id: str, remote_sha: str, token: str | None
) -> tuple[str, ...]:
    """Which of chat_template / tokenizer changed in tokenizer_config.json (the template lives there for
    most models, and a template fix is the most common "small" update)."""
    from huggingface_hub import hf_hub_download

    try:
        local = read_metadata(local_dir / "tokenizer_config.json") if local_dir else None
        with (
            tempfile.TemporaryDirectory(prefix="mlxcr-update-") as tmp,
            metadata_download("tokenizer_config.json"),
        ):
            remote_file = hf_hub_download(
                repo_id,
                "tokenizer_config.json",
                revision=remote_sha,
                local_dir=tmp,
                endpoint=settings.HF_ENDPOINT,
                token=token or False,
            )
            remote = read_metadata(Path(remote_file))
    except Exception as exc:  # cannot tell which part changed: say the tokenizer did
        log.info("update check %s: could not compare tokenizer_config.json: %s", repo_id, type(exc).__name__)
        return (TOKENIZER,)
    if not isinstance(local, dict) or not isinstance(remote, dict):
        return (TOKENIZER,)
    found = []
    if local.get("chat_template") != remote.get("chat_template"):
        found.append(CHAT_TEMPLATE)
    if {k: v for k, v in local.items() if k != "chat_template"} != {
        k: v for k, v in remote.items() if k != "chat_template"
    }:
        found.append(TOKENIZER)
    return tuple(found) or (TOKENIZER,)


def _local_files(snapshot: Snapshot) -> tuple[list[FileRecord], Path | None]:
    try:
        directory = snapshot_path(snapshot)
    except CacheError:
        directory = None
    if snapshot.files:
        return [file_record(entry) for entry in snapshot.files], directory
    return (cached_file_records(directory) if directory and directory.is_dir() else []), directory


def _diff(info: UpdateInfo, snapshot: Snapshot, remote: Any, token: str | None) -> None:
    local_records, local_dir = _local_files(snapshot)
    local = {r.path: r for r in local_records}
    try:
        blobs = repo_path(cache_root_path(snapshot.cache_root), info.repo_id) / "blobs"
    except CacheError:
        blobs = None
    fetched: set[str] = set()
    for sibling in sorted(remote.siblings or [], key=lambda s: s.rfilename):
        path = sibling.rfilename
        if path in local and _same(local[path], sibling):
            continue
        sha256, blob_id = _remote_identity(sibling)
        etag = sha256 or blob_id
        cached = bool(etag and blobs is not None and (blobs / etag).is_file())
        if path not in local:
            change, categories = "added", (categorize(path),)
        elif PurePosixPath(path).name == "tokenizer_config.json":
            change, categories = (
                "modified",
                _tokenizer_config_change(local_dir, info.repo_id, remote.sha, token),
            )
        else:
            change, categories = "modified", (categorize(path),)
        info.changes.append(FileChange(path, change, categories, sibling.size or 0, cached))
        if not cached and etag not in fetched:
            fetched.add(etag)
            info.bytes_to_fetch += sibling.size or 0
    remote_paths = {s.rfilename for s in remote.siblings or []}
    for path in sorted(set(local) - remote_paths):
        info.changes.append(FileChange(path, "removed", (categorize(path),), 0, True))


def _credentials(repos: list[Repository]) -> dict[int, HubCredential]:
    """The credential each repo was last pulled with, if any: one query."""
    found: dict[int, HubCredential] = {}
    jobs = (
        DownloadJob.objects.filter(repository__in=repos, credential__isnull=False)
        .select_related("credential")
        .order_by("repository_id", "-created_at")
    )
    for job in jobs:
        found.setdefault(job.repository_id, job.credential)
    return found


def check_updates(*, repo_ids: Iterable[str] | None = None) -> list[UpdateInfo]:
    """Check every Hub repo with a ready snapshot (or just `repo_ids`) and store the result on Repository."""
    from huggingface_hub import HfApi

    from models_app.services import credentials, errors
    from models_app.services.hub_progress import install_http_guard

    install_http_guard()
    queryset = Repository.objects.filter(kind=Repository.Kind.HUB).prefetch_related(
        Prefetch(
            "snapshots",
            queryset=newest_first(Snapshot.objects.ready()).select_related("repository"),
            to_attr="ready_snapshots",
        )
    )
    if repo_ids is not None:
        queryset = queryset.filter(repo_id__in=list(repo_ids))
    repos = [r for r in queryset if r.ready_snapshots]
    tokens = _credentials(repos)
    api = HfApi(endpoint=settings.HF_ENDPOINT)
    results = []
    for repo in repos:
        newest = repo.ready_snapshots[0]
        # A snapshot pulled by commit sha is pinned: there is nothing for it to follow.
        ref = newest.ref or "main"
        info = UpdateInfo(repo_id=repo.repo_id, ref=ref, local_sha=newest.commit_sha)
        results.append(info)
        if _SHA_RE.fullmatch(ref):
            continue
        credential = tokens.get(repo.id)
        try:
            token = credentials.credential_token(credential) if credential else None
            remote = api.model_info(repo.repo_id, revision=ref, files_metadata=True, token=token or False)
            hub_guard.check_commit(remote.sha, repo_id=repo.repo_id)  # stored, and compared to snapshot dirs
        except Exception as exc:  # one repo's failure must not stop the others
            error = errors.classify(exc, repo.repo_id, has_token=credential is not None, revision=ref)
            info.error_code, info.error = error.code, error.message
            continue
        info.remote_sha = remote.sha or ""
        local_shas = {s.commit_sha for s in repo.ready_snapshots}
        info.update_available = bool(info.remote_sha) and info.remote_sha not in local_shas
        if info.update_available:
            _diff(info, newest, remote, token)
        fields: dict[str, Any] = {
            "remote_sha": info.remote_sha,
            "remote_checked_at": timezone.now(),
            "update_available": info.update_available,
            "update_summary": info.summary() if info.update_available else {},
            "updated_at": timezone.now(),
        }
        Repository.objects.filter(id=repo.id).update(**fields)
        # Visibility as the Hub reports it: imported repos start private until this shows them to an anonymous
        # caller (a "public" read through a token is checked again without it).
        visibility.record(repo, private=remote.private, gated=remote.gated, token_used=bool(token))
    return results
