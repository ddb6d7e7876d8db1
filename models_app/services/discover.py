"""Discover: search the Hub for MLX models, each with what it weighs, whether it is already here and whether
it fits this machine (the pull plan's memory verdict and the default cache's free disk).

One listing call per search (huggingface_hub `list_models`, its pages followed only up to
DISCOVER_MAX_RESULTS), never a call per model: sizes and quantization come from the listing's `safetensors`
and `config` fields. The Hub's answer is cached (Django cache, DISCOVER_CACHE_TTL) per query and token; what
is local (already here, verdicts) is worked out on every call, so a pull or a full disk shows at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core.cache import cache
from huggingface_hub import HfApi

from models_app.models import HubCredential, Snapshot
from models_app.services import discover_meta as meta
from models_app.services import hub_guard
from models_app.services.cache_layout import cache_root_path
from models_app.services.health import disk_usage
from models_app.services.hub_progress import install_http_guard
from models_app.services.plan import memory_verdict

log = logging.getLogger(__name__)

# What the page offers -> huggingface_hub's sort names (the Hub sorts descending).
SORTS = {"downloads": "downloads", "trending": "trending_score", "recent": "last_modified", "likes": "likes"}
MAX_QUERY_LENGTH = 200
# The listing fields a result is built from (expand= keeps the Hub's answer small).
EXPAND = [
    "author",
    "cardData",
    "config",
    "downloads",
    "gated",
    "lastModified",
    "library_name",
    "likes",
    "private",
    "safetensors",
    "sha",
    "tags",
    "trendingScore",
    "usedStorage",
]
# After the Hub failed a search, searches answer "unavailable" at once for this long instead of each waiting
# out DISCOVER_TIMEOUT (huggingface_hub retries 5xx and refused connections with backoff).
OUTAGE_BACKOFF_SECONDS = 30


class DiscoverError(Exception):
    """A search that cannot run: `code` "invalid" (bad input) or "unavailable" (the Hub did not answer)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class HubModel:
    """What the Hub listing says about one repo (this is what is cached)."""

    repo_id: str
    author: str
    sha: str
    base_model: str
    quantization: str
    parameters: int | None
    weights_bytes: int | None
    downloads: int
    likes: int
    trending: int
    last_modified: str  # ISO 8601, or ""
    private: bool
    gated: bool
    library: str
    model_type: str


@dataclass
class DiscoverResult:
    hub: HubModel
    here: bool  # a ready snapshot of this repo is in the cache
    update_available: bool
    verdict: str  # green | amber | red
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            **asdict(self.hub),
            "here": self.here,
            "update_available": self.update_available,
            "verdict": self.verdict,
            "verdict_reason": self.reason,
        }


@dataclass
class VariantGroup:
    base_model: str
    results: list[DiscoverResult]


@dataclass
class DiscoverPage:
    query: str
    sort: str
    mlx_only: bool
    author: str
    results: list[DiscoverResult] = field(default_factory=list)
    from_cache: bool = False

    @property
    def groups(self) -> list[VariantGroup]:
        """Results by base model, in the order the Hub ranked each group's best; within a group, smallest
        first, so 4/6/8-bit and bf16 conversions sit side by side."""
        groups: dict[str, VariantGroup] = {}
        for r in self.results:
            group = groups.setdefault(meta.base_key(r.hub.base_model), VariantGroup(r.hub.base_model, []))
            group.results.append(r)
            if "/" in r.hub.base_model:  # a declared base ("org/name") names the group better than a guess
                group.base_model = r.hub.base_model
        for g in groups.values():
            g.results.sort(key=lambda r: (r.hub.weights_bytes is None, r.hub.weights_bytes or 0))
        return list(groups.values())


def search(
    query: str,
    *,
    sort: str = "downloads",
    author: str = "",
    mlx_only: bool = True,
    credential: HubCredential | None = None,
    user: Any = None,
) -> DiscoverPage:
    """Search the Hub (an empty query lists the top models for the sort). Raises DiscoverError("invalid") for
    bad input, DiscoverError("unavailable") when the Hub cannot be asked now."""
    query, author = _check(query, sort, author)
    page = DiscoverPage(query=query, sort=sort, mlx_only=mlx_only, author=author)
    key = _cache_key(query, sort, author, mlx_only, credential)
    cached = cache.get(key)
    if cached is not None:
        models = [HubModel(**m) for m in cached]
        page.from_cache = True
    else:
        models = _list(query, sort, author, mlx_only, credential)
        cache.set(key, [asdict(m) for m in models], settings.DISCOVER_CACHE_TTL)
    page.results = _local_view(models, user)
    return page


def pull_url(repo_id: str) -> str:
    """The Pull page prefilled with this repo, its plan shown at once (?repo=&preview=1)."""
    return f"/pull/?{urlencode({'repo': repo_id, 'preview': '1'})}"


def _check(query: str, sort: str, author: str) -> tuple[str, str]:
    query, author = (query or "").strip(), (author or "").strip()
    if sort not in SORTS:
        raise DiscoverError("invalid", f"Unknown sort {sort[:40]!r}: use one of {', '.join(SORTS)}.")
    if len(query) > MAX_QUERY_LENGTH:
        raise DiscoverError("invalid", f"The search is too long (at most {MAX_QUERY_LENGTH} characters).")
    if author and not all(c.isalnum() or c in "-_." for c in author):
        raise DiscoverError("invalid", "An author is a Hub user or organisation name (letters, digits, -_.).")
    return query, author


def _cache_key(query: str, sort: str, author: str, mlx_only: bool, credential: HubCredential | None) -> str:
    # Per token: private repos one token sees must not show up in another's results. The credential's id and
    # its ciphertext (which changes with the token) name it without the token itself reaching the cache.
    who = (
        f"{credential.pk}:{hashlib.sha256(credential.token_ciphertext.encode()).hexdigest()}"
        if credential is not None
        else "anonymous"
    )
    raw = json.dumps([settings.HF_ENDPOINT, query.lower(), sort, author.lower(), mlx_only, who])
    return "discover:" + hashlib.sha256(raw.encode()).hexdigest()


def _token(credential: HubCredential | None) -> str | None:
    if credential is None:
        return None
    from models_app.services import credentials

    return credentials.credential_token(credential)


def _unavailable() -> DiscoverError:
    return DiscoverError(
        "unavailable",
        f"Search is unavailable: the Hub ({settings.HF_ENDPOINT}) did not answer. Try again in a minute; "
        "pulling a repo you know by name may still work.",
    )


def _outage_key() -> str:
    return "discover:outage:" + hashlib.sha256(settings.HF_ENDPOINT.encode()).hexdigest()


def _list(
    query: str, sort: str, author: str, mlx_only: bool, credential: HubCredential | None
) -> list[HubModel]:
    if cache.get(_outage_key()):
        raise _unavailable()
    token = _token(credential)
    install_http_guard()
    try:
        with hub_guard.deadline(float(settings.DISCOVER_TIMEOUT), "DISCOVER_TIMEOUT"):
            listing = HfApi(endpoint=settings.HF_ENDPOINT).list_models(
                search=query or None,
                author=author or None,
                filter="mlx" if mlx_only else None,
                sort=SORTS[sort],  # type: ignore[arg-type]
                limit=settings.DISCOVER_MAX_RESULTS,
                expand=EXPAND,  # type: ignore[arg-type]
                token=token or False,
            )
            return [_hub_model(info) for info in listing]
    except Exception as exc:
        status = _hub_status(exc)
        log.warning("discover: Hub search failed: %s (HTTP %s)", type(exc).__name__, status)
        if status in (401, 403) and token:
            # This user's token, not the Hub: no backoff for everyone else.
            raise DiscoverError(
                "invalid_credential",
                "The Hub refused your default Hub token: replace it in Settings, or make none default to "
                "search without it.",
            ) from exc
        cache.set(_outage_key(), True, OUTAGE_BACKOFF_SECONDS)
        raise _unavailable() from exc


def _hub_status(exc: BaseException) -> int | None:
    """The HTTP status of the Hub's answer somewhere in the exception chain, if it answered at all."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    return None


def _hub_model(info: Any) -> HubModel:
    tags = [t for t in info.tags or [] if isinstance(t, str)]
    config = info.config if isinstance(info.config, dict) else None
    quant = meta.quantization(config, tags, info.id)
    safetensors = dict(info.safetensors) if info.safetensors else None
    return HubModel(
        repo_id=info.id,
        author=info.author or info.id.split("/")[0],
        sha=info.sha or "",
        base_model=meta.base_model(info.card_data, tags, info.id),
        quantization=quant,
        parameters=meta.parameter_count(safetensors, meta.bits(quant)),
        weights_bytes=meta.weight_bytes(safetensors),
        downloads=int(info.downloads or 0),
        likes=int(info.likes or 0),
        trending=int(info.trending_score or 0),
        last_modified=info.last_modified.isoformat() if info.last_modified else "",
        private=bool(info.private),
        gated=bool(info.gated),
        library=info.library_name or "",
        model_type=str((config or {}).get("model_type") or ""),
    )


def _local_view(models: list[HubModel], user: Any) -> list[DiscoverResult]:
    """Already here, update available and the fits-here verdict: local facts, one query for all results."""
    snapshots = Snapshot.objects.ready().filter(repository__repo_id__in=[m.repo_id for m in models])
    if user is not None:
        snapshots = snapshots.visible_to(user)
    here: dict[str, bool] = {}
    for repo_id, update in snapshots.values_list("repository__repo_id", "repository__update_available"):
        here[repo_id] = here.get(repo_id, False) or update
    free = disk_usage(cache_root_path("default"))["free"]
    results = []
    for m in models:
        level, reason = verdict(m, free)
        results.append(DiscoverResult(m, m.repo_id in here, here.get(m.repo_id, False), level, reason))
    return results


def verdict(model: HubModel, disk_free: int) -> tuple[str, str]:
    """The pull plan's memory verdict on the weights alone (the listing has no layer counts, so the KV cache
    the plan adds is left out), and red when the default cache's disk cannot take them."""
    if model.weights_bytes is None:
        return "amber", "Size unknown: open the pull plan to see whether it fits."
    if disk_free - model.weights_bytes < settings.DOWNLOAD_DISK_RESERVE:
        return "red", "Not enough free disk in the default cache for its weights."
    memory = memory_verdict({}, model.weights_bytes)
    return memory.level, memory.reason
