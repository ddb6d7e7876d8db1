"""What a pull would do, before doing it: the Pull page's preview.

Metadata only, in the web process: one model-info call (files with sizes) and one tiny config.json download
into a temporary directory, never into the HF cache (a half-made snapshot there would be picked up by
reconcile). Failures are the same DownloadError codes the download itself would raise.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.utils import filter_repo_objects

from models_app.models import HubCredential, Snapshot
from models_app.services import errors, hub_checks, hub_guard, nodes, validation
from models_app.services.cache_layout import cache_root_path, context_length, repo_path
from models_app.services.errors import DownloadError
from models_app.services.health import disk_usage
from models_app.services.hub_progress import install_http_guard
from models_app.services.node_facts import DEFAULT_BUDGET_SHARE, memory_budget, physical_memory

# The context the memory verdict assumes when the model allows more: chats rarely fill 128k tokens, and
# counting the full window would call every modern model "too big".
PLAN_CONTEXT_TOKENS = 8192
KV_BYTES_PER_VALUE = 2  # fp16/bf16 keys and values
WEIGHT_SUFFIXES = (".safetensors",)
__all__ = ["DEFAULT_BUDGET_SHARE", "memory_budget", "physical_memory"]  # where they used to live
ANY_NODE = nodes.ANY_NODE
# Beyond this share of physical memory the machine swaps or the load fails.
RED_SHARE = 0.9


@dataclass(frozen=True)
class PlanFile:
    path: str
    size: int
    cached: bool


@dataclass
class MemoryVerdict:
    level: str  # green | amber | red
    reason: str
    weights_bytes: int
    kv_cache_bytes: int
    context_tokens: int | None
    needed_bytes: int
    budget_bytes: int
    total_bytes: int


@dataclass
class NodeOption:
    """One machine a pull could go to, as its workers' heartbeats describe it (this machine: read here)."""

    node: str
    this: bool
    disk_free_bytes: int | None  # None: no worker of it publishes the disk of that cache root
    cached_bytes: int
    to_download_bytes: int
    memory: MemoryVerdict

    @property
    def free_after_bytes(self) -> int | None:
        return None if self.disk_free_bytes is None else self.disk_free_bytes - self.to_download_bytes

    @property
    def fits_disk(self) -> bool:
        free_after = self.free_after_bytes
        return free_after is not None and free_after >= settings.DOWNLOAD_DISK_RESERVE


@dataclass
class PullPlan:
    repo_id: str
    revision: str
    commit_sha: str
    cache_root: str
    private: bool
    gated: bool
    files: list[PlanFile]
    total_bytes: int
    cached_bytes: int
    disk_free_bytes: int
    is_mlx: bool
    mlx_reason: str
    model_type: str
    memory: MemoryVerdict
    warnings: list[str] = field(default_factory=list)
    # Another machine's pull: its disk and memory as its workers publish them, what it has cached as the
    # database knows it. A worker of an older version publishes no disk: then the plan does not claim either
    # way (its worker checks the disk before writing a byte: disk_full).
    remote_node: str = ""
    disk_known: bool = True
    # The machine it goes to ("" when the pull asked for any machine and none has room), and why that one.
    node: str = ""
    node_reason: str = ""
    # Every live machine with a download worker, as a pull there would look.
    options: list[NodeOption] = field(default_factory=list)

    @property
    def to_download_bytes(self) -> int:
        return self.total_bytes - self.cached_bytes

    @property
    def free_after_bytes(self) -> int:
        return self.disk_free_bytes - self.to_download_bytes

    @property
    def disk_ok(self) -> bool:
        if not self.node:
            return False
        if not self.disk_known:
            return True
        return self.free_after_bytes >= settings.DOWNLOAD_DISK_RESERVE

    @property
    def can_start(self) -> bool:
        return self.is_mlx and self.disk_ok


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    # Multimodal configs keep the language model's shape under text_config.
    nested = config.get("text_config")
    return {**config, **nested} if isinstance(nested, dict) else config


def kv_cache_bytes(config: dict[str, Any], context: int) -> int:
    """Keys and values for `context` tokens: 2 * layers * kv_heads * head_dim * context * 2 bytes."""
    cfg = _text_config(config)
    try:
        layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or 0)
        heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 0)
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or (int(cfg.get("hidden_size") or 0) // heads if heads else 0))
    except (TypeError, ValueError):
        return 0
    return 2 * layers * kv_heads * head_dim * context * KV_BYTES_PER_VALUE


def memory_verdict(
    config: dict[str, Any],
    weights_bytes: int,
    *,
    total: int | None = None,
    budget: int | None = None,
    machine: str = "this machine",
) -> MemoryVerdict:
    """`total`/`budget`: another machine's, as its workers publish them (default: this machine's)."""
    total = physical_memory() if total is None else total
    budget = memory_budget(total) if budget is None else budget
    model_context = context_length(config)
    context = min(model_context or PLAN_CONTEXT_TOKENS, PLAN_CONTEXT_TOKENS)
    kv = kv_cache_bytes(config, context)
    needed = weights_bytes + kv
    if not total:
        level, reason = "amber", f"The memory size of {machine} is unknown."
    elif needed <= budget:
        level, reason = "green", "Fits in the inference memory budget."
    elif needed <= total * RED_SHARE:
        level, reason = (
            "amber",
            "Fits in memory, but over the inference budget: other models will be unloaded.",
        )
    else:
        level, reason = "red", f"Needs more memory than {machine} has: loading it would fail or swap."
    return MemoryVerdict(level, reason, weights_bytes, kv, context, needed, budget, total)


def mlx_check(
    config: dict[str, Any] | None, paths: list[str], *, config_problem: str | None = None
) -> tuple[bool, str]:
    """Whether mlx-lm can load this repo, with the very checks the download runs (hub_checks).
    `config_problem`: why config.json was not read (too big, nested too deep)."""
    problem = hub_checks.mlx_file_problem(paths)
    if problem is None:
        problem = config_problem or (
            hub_checks.mlx_config_problem(config) if config is not None else "its config.json is unreadable"
        )
    if problem is not None:
        return False, f"Not loadable by mlx-lm: {problem}."
    model_type = str(config.get("model_type")) if config else ""
    if config and ("quantization" in config or "quantization_config" in config):
        return True, f"MLX model ({model_type}, quantized)."
    return True, f"Loadable by mlx-lm ({model_type})."


def _token(credential: HubCredential | None) -> str | None:
    if credential is None:
        return None
    from models_app.services import credentials

    return credentials.credential_token(credential)


def _blob_cached(repo_dir: Path, sibling: Any) -> bool:
    lfs = sibling.lfs
    etag = (lfs.sha256 if lfs is not None else None) or sibling.blob_id
    # Only a well-formed id names a blob: anything else from the Hub must not become a path to probe.
    return bool(etag) and bool(hub_guard.ETAG_RE.fullmatch(etag)) and (repo_dir / "blobs" / etag).is_file()


def _read_config(repo_id: str, commit_sha: str, token: str | None, size: int | None) -> dict[str, Any] | None:
    """config.json into a temporary directory. Raises hub_guard.MetadataError when too big (announced or
    counted) or nested too deep."""
    hub_guard.check_metadata_size("config.json", size)
    with tempfile.TemporaryDirectory(prefix="mlxcr-plan-") as tmp, hub_guard.metadata_download("config.json"):
        path = hf_hub_download(
            repo_id,
            "config.json",
            revision=commit_sha,
            local_dir=tmp,
            endpoint=settings.HF_ENDPOINT,
            token=token or False,
        )
        try:
            config = hub_guard.read_metadata(Path(path), "config.json")
        except (OSError, ValueError):
            return None
    return config if isinstance(config, dict) else None


def _etag(sibling: Any) -> str:
    lfs = sibling.lfs
    return (lfs.sha256 if lfs is not None else None) or sibling.blob_id or ""


def _blobs_by_node(repo_id: str, cache: str) -> dict[str, set[str]]:
    """The blobs (sha256 and git ids) of this repo each machine holds in that cache root, from the database:
    another machine's files cannot be looked at from here. One query."""
    held: dict[str, set[str]] = {}
    rows = Snapshot.objects.filter(
        repository__repo_id=repo_id,
        cache_root=cache,
        status__in=[Snapshot.Status.READY, Snapshot.Status.PARTIAL],
    ).values_list("node", "files")
    for node, files in rows:
        ids = held.setdefault(node, set())
        for entry in files or []:
            if isinstance(entry, dict):
                ids.update(str(entry[k]) for k in ("sha256", "blob_id") if entry.get(k))
    return held


MEMORY_RANK = {"green": 0, "amber": 1, "red": 2}


def _options(
    statuses: list[nodes.NodeStatus],
    *,
    cache: str,
    sizes: list[tuple[Any, int, bool]],
    held: dict[str, set[str]],
    config: dict[str, Any],
    weights: int,
) -> list[NodeOption]:
    """`sizes`: (sibling, size, cached here) per planned file."""
    total = sum(size for _, size, _ in sizes)
    options = []
    for status in statuses:
        if status.this:
            cached = sum(size for _, size, here in sizes if here)
            free: int | None = disk_usage(cache_root_path(cache))["free"]
            verdict = memory_verdict(config, weights)
        else:
            ids = held.get(status.name, set())
            cached = sum(size for sibling, size, _ in sizes if {_etag(sibling), sibling.blob_id} & ids)
            root = status.disk.get(cache)
            free = root["free"] if root else None
            memory = status.memory
            verdict = memory_verdict(
                config,
                weights,
                total=memory.get("total", 0),
                budget=memory.get("budget") or None,
                machine=status.name,
            )
        options.append(NodeOption(status.name, status.this, free, cached, total - cached, verdict))
    return options


def pick_node(options: list[NodeOption]) -> tuple[NodeOption | None, str]:
    """For a pull to "any" machine: among those whose cache root has room for the download plus the reserve,
    the one where the model fits in memory best (green, then amber, then red), then the most disk left."""
    fitting = [o for o in options if o.fits_disk]
    if not fitting:
        if not options:
            return None, "No machine has a download worker running."
        sizes = "; ".join(
            f"{o.node}: "
            + ("disk unknown" if o.disk_free_bytes is None else f"{_gb(o.disk_free_bytes)} free")
            for o in options
        )
        return None, f"No machine has room for {_gb(options[0].to_download_bytes)} ({sizes})."
    best = min(fitting, key=lambda o: (MEMORY_RANK[o.memory.level], -(o.free_after_bytes or 0), o.node))
    reason = (
        f"Picked {best.node}: {_gb(best.free_after_bytes or 0)} free after the download, memory "
        f"{best.memory.level} ({_gb(best.memory.needed_bytes)} needed, budget {_gb(best.memory.budget_bytes)})."
    )
    others = [o for o in options if o is not best]
    if others:
        reason += " Others: " + "; ".join(f"{o.node} ({_standing(o)})" for o in others)
        reason += "."
    return best, reason


def _standing(option: NodeOption) -> str:
    if option.fits_disk:
        return f"memory {option.memory.level}"
    return "free disk unknown" if option.disk_free_bytes is None else "not enough disk"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def plan_pull(
    repo_id: str,
    revision: str = "main",
    *,
    credential: HubCredential | None = None,
    cache: str | None = None,
    allow_patterns: list[str] | None = None,
    node: str | None = None,
) -> PullPlan:
    """What pulling repo_id@revision would download, whether it fits on disk and in memory, and whether
    mlx-lm can load it. Raises DownloadError (auth_required, gated, not_found, revision_not_found, network...).
    `node`: the machine (default: this one), or "any": the live machine with room (pick_node), saying why."""
    cache = cache or "default"
    root = cache_root_path(cache)
    node = node or settings.NODE_NAME
    token = _token(credential)
    install_http_guard()
    hub = _read_hub(repo_id, revision, token=token, allow_patterns=allow_patterns)
    config = hub.config or {}
    repo_dir = repo_path(root, repo_id)
    sizes = [(s, s.size or 0, _blob_cached(repo_dir, s)) for s in hub.siblings]
    total = sum(size for _, size, _ in sizes)
    is_mlx, reason = mlx_check(hub.config, hub.every_path, config_problem=hub.config_problem)
    weights = sum(size for s, size, _ in sizes if s.rfilename.endswith(WEIGHT_SUFFIXES))
    statuses = _download_nodes()
    held = _blobs_by_node(repo_id, cache)
    options = _options(statuses, cache=cache, sizes=sizes, held=held, config=config, weights=weights)
    chosen, node_reason = _choose_node(node, options, statuses, config=config, weights=weights, total=total)
    target = chosen or next(o for o in options if o.this)
    remote = chosen is not None and not chosen.this
    held_there = held.get(target.node, set())
    files = [
        PlanFile(s.rfilename, size, here if target.this else bool({_etag(s), s.blob_id} & held_there))
        for s, size, here in sizes
    ]
    plan = PullPlan(
        repo_id=repo_id,
        revision=revision,
        commit_sha=hub.sha,
        cache_root=cache,
        private=bool(hub.info.private),
        gated=bool(hub.info.gated),
        files=files,
        total_bytes=total,
        cached_bytes=target.cached_bytes,
        disk_free_bytes=target.disk_free_bytes or 0,
        is_mlx=is_mlx,
        mlx_reason=reason,
        model_type=str(config.get("model_type") or ""),
        memory=target.memory,
        remote_node=target.node if remote else "",
        disk_known=target.disk_free_bytes is not None,
        node=chosen.node if chosen else "",
        node_reason=node_reason,
        options=options,
    )
    plan.warnings.extend(_warnings(plan, hub, allow_patterns=allow_patterns))
    return plan


@dataclass(frozen=True)
class _HubView:
    """What the Hub says of a repo at a revision, as far as the plan needs it."""

    info: Any  # huggingface_hub's ModelInfo
    sha: str
    every_path: list[str]
    siblings: list[Any]  # the files the patterns select
    config: dict[str, Any] | None
    config_problem: str | None  # why config.json was not read (too big, nested too deep)


def _read_hub(
    repo_id: str, revision: str, *, token: str | None, allow_patterns: list[str] | None
) -> _HubView:
    """The model info and config.json, within HUB_PREVIEW_TIMEOUT. Raises DownloadError."""
    config: dict[str, Any] | None = None
    config_problem: str | None = None
    try:
        # The web process waits on the Hub for no longer than this, whatever the Hub trickles.
        with hub_guard.deadline(float(settings.HUB_PREVIEW_TIMEOUT), "HUB_PREVIEW_TIMEOUT"):
            info = HfApi(endpoint=settings.HF_ENDPOINT).model_info(
                repo_id, revision=revision, files_metadata=True, token=token or False
            )
            sha = hub_guard.check_commit(info.sha, repo_id=repo_id)
            every_path = [s.rfilename for s in info.siblings or []]
            if unmatched := validation.unmatched_patterns(allow_patterns, every_path):
                raise validation.no_match_error(repo_id, unmatched, every_path)
            siblings = list(
                filter_repo_objects(
                    info.siblings or [], allow_patterns=allow_patterns, key=lambda s: s.rfilename
                )
            )
            # Whether it is a model is the repo's question (config.json is fetched first whatever the patterns).
            config_size = next((s.size for s in info.siblings or [] if s.rfilename == "config.json"), None)
            if "config.json" in every_path:
                try:
                    config = _read_config(repo_id, sha, token, config_size)
                except hub_guard.MetadataError as exc:
                    config_problem = exc.reason
    except DownloadError:
        raise
    except Exception as exc:  # every Hub failure becomes a code the page explains
        raise errors.classify(exc, repo_id, has_token=token is not None, revision=revision) from exc
    return _HubView(info, sha, every_path, siblings, config, config_problem)


def _warnings(plan: PullPlan, hub: _HubView, *, allow_patterns: list[str] | None) -> list[str]:
    if not plan.node:  # no machine has room
        warnings = [plan.node_reason]
    elif not plan.disk_ok:
        warnings = ["Not enough free disk space: free some (delete unused models) first."]
    else:
        warnings = []
    paths = [s.rfilename for s in hub.siblings]
    if allow_patterns and (missing := hub_checks.mlx_missing(paths, hub.every_path)):
        warnings.append(
            "These files alone are not a model mlx-lm can load: the snapshot will be partial (not offered "
            f"for chat) until a pull adds {', '.join(missing[:6])}."
        )
    return warnings


def _download_nodes() -> list[nodes.NodeStatus]:
    """The machines up with a download worker, this one always among them: it is planned for even with its
    download worker stopped (the pull waits in the queue)."""
    statuses = [s for s in nodes.cluster() if s.up and s.can_download]
    if not any(s.this for s in statuses):
        statuses.insert(
            0, nodes.NodeStatus(name=settings.NODE_NAME, state=nodes.UP, last_seen=None, this=True)
        )
    return statuses


def _choose_node(
    node: str,
    options: list[NodeOption],
    statuses: list[nodes.NodeStatus],
    *,
    config: dict[str, Any],
    weights: int,
    total: int,
) -> tuple[NodeOption | None, str]:
    """The option for the machine asked for, or for ANY_NODE the one pick_node prefers (None when none
    fits), and why."""
    if node == ANY_NODE:
        return pick_node([o for o in options if o.node in {s.name for s in statuses if s.can_download}])
    chosen = next((o for o in options if o.node == node), None)
    if chosen is None:  # a machine without a live download worker: the pull itself says so
        chosen = NodeOption(
            node, False, None, 0, total, memory_verdict(config, weights, total=0, machine=node)
        )
    return chosen, ""


def check_patterns(
    repo_id: str,
    revision: str,
    *,
    allow_patterns: list[str] | None,
    credential: HubCredential | None = None,
) -> None:
    """Refuse, before a job exists, patterns that select none of the repo's files (one metadata call). When
    the Hub cannot be asked now, the job asks it and refuses the same way."""
    allow_patterns = validation.validate_allow_patterns(allow_patterns)
    if not allow_patterns:
        return
    try:
        info = HfApi(endpoint=settings.HF_ENDPOINT).model_info(
            repo_id, revision=revision, token=_token(credential) or False, timeout=10
        )
    except Exception:  # auth, network, unknown repo: the job reports those with its own codes
        return
    paths = [s.rfilename for s in info.siblings or []]
    if unmatched := validation.unmatched_patterns(allow_patterns, paths):
        raise validation.no_match_error(repo_id, unmatched, paths)
