"""Discover: search the Hub for MLX models, each with what it weighs, whether it is already here and whether
it fits this machine (the pull plan's memory verdict and the default cache's free disk).

One listing per search and token (the Hub's `/api/models`, its `Link` pages followed only up to
DISCOVER_MAX_RESULTS; "More results" goes on from the Hub's cursor), never a call per model when the listing
says enough: sizes and quantization come from its `safetensors` and `config` fields. A repo the listing leaves
without sizes is checked on its own (`discover_details`), after the page shows. Every Hub answer is cached
(Django's cache: Redis, shared by every process; DISCOVER_CACHE_TTL) per query, page and token; what is local
(already here, verdicts) is worked out on every call, so a pull or a full disk shows at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from django.conf import settings
from django.core.cache import cache
from huggingface_hub.hf_api import ModelInfo
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

from models_app.models import HubCredential, Snapshot
from models_app.selectors.snapshots import snapshot_list
from models_app.services import discover_meta as meta
from models_app.services import hub_guard
from models_app.services.cache_layout import cache_root_path
from models_app.services.health import disk_usage
from models_app.services.hub_progress import install_http_guard
from models_app.services.plan import memory_verdict

log = logging.getLogger(__name__)

# What the page offers -> the Hub's sort keys (descending: the Hub's default direction).
SORTS = {"downloads": "downloads", "trending": "trendingScore", "recent": "lastModified", "likes": "likes"}
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
# The Hub's cursors are opaque base64-ish strings (the local Hub's are offsets): nothing else is passed on.
_CURSOR = re.compile(r"[A-Za-z0-9_=.+/%-]{1,1000}")
# Listing requests per search page and token at most, however small the Hub's pages.
MAX_LISTING_REQUESTS = 10


class DiscoverError(Exception):
    """A search that cannot run: `code` "invalid" (bad input) or "unavailable" (the Hub did not answer)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class NoListing(Exception):
    """The endpoint answers, but serves no model listing (a mirror that knows repos only by name)."""


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
    cursor: str = ""  # the page this is ("" for the first)
    next_cursor: str = ""  # "More results" from here; "" when the Hub has no more
    # Tokens the Hub refused while their private repos were being looked for (named, never shown).
    warnings: list[str] = field(default_factory=list)

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
    credentials: Sequence[HubCredential] = (),
    cursor: str = "",
    user: Any = None,
) -> DiscoverPage:
    """Search the Hub (an empty query lists the top models for the sort), one page of results from `cursor`.

    `credentials` are the user's stored tokens, the default one first: the first token's listing is the
    results; on the first page, each other token's listing adds the private repos only it can read (merged by
    the sort, each repo once). Raises DiscoverError("invalid") for bad input, ("invalid_credential") when the
    Hub refuses the first token, ("unavailable") when the Hub cannot be asked now."""
    query, author = _check(query, sort, author)
    cursor = (cursor or "").strip()
    if cursor and not _CURSOR.fullmatch(cursor):
        raise DiscoverError("invalid", "That page cursor is not one this search gave.")
    page = DiscoverPage(query=query, sort=sort, mlx_only=mlx_only, author=author, cursor=cursor)
    first, others = (credentials[0], list(credentials[1:])) if credentials else (None, [])
    models, page.next_cursor, page.from_cache = _listing(query, sort, author, mlx_only, first, cursor)
    if not cursor and others:
        models = _with_private_repos_of(others, models, page, (query, sort, author, mlx_only))
    page.results = _local_view(models, user)
    return page


def _with_private_repos_of(
    others: list[HubCredential], models: list[HubModel], page: DiscoverPage, ask: tuple[str, str, str, bool]
) -> list[HubModel]:
    """Add what each other token lists as private (and the first did not list), placed by the sort."""
    from models_app.services.credentials import label

    found = {m.repo_id: m for m in models}
    added = False
    for credential in others:
        try:
            theirs, _next, cached = _listing(*ask, credential, "")
        except DiscoverError as err:
            # Their private repos are missing, the search is not: say which token, never what it is.
            page.warnings.append(f"Your Hub token {label(credential)} was not searched: {err.message}")
            continue
        page.from_cache = page.from_cache and cached
        for m in theirs:
            if m.private and m.repo_id not in found:
                found[m.repo_id] = m
                models.append(m)
                added = True
    if added:  # a stable sort keeps the Hub's order among the first token's results
        models.sort(key=_sort_value(page.sort), reverse=True)
    return models


def _sort_value(sort: str) -> Any:
    if sort == "recent":
        return lambda m: m.last_modified
    return lambda m: {"downloads": m.downloads, "likes": m.likes, "trending": m.trending}[sort]


def read_cache(key: str) -> Any:
    """The cached value, or None; a cache that is down (Redis restarting) is a miss, never an error."""
    try:
        return cache.get(key)
    except Exception as exc:
        log.warning("discover: cache unavailable (%s): asking the Hub", type(exc).__name__)
        return None


def write_cache(key: str, value: Any, ttl: int) -> None:
    try:
        cache.set(key, value, ttl)
    except Exception as exc:
        log.warning("discover: cache unavailable (%s): answer not kept", type(exc).__name__)


def pull_url(repo_id: str) -> str:
    """The Pull page prefilled with this repo, its plan shown at once (?repo=&preview=1)."""
    return f"/pull/?{urlencode({'repo': repo_id, 'preview': '1'})}"


def details_url(repo_id: str) -> str:
    """Where the page (and API clients) get one result's sizes and verdict checked on its own."""
    return f"/api/v1/discover/details?{urlencode({'repo_id': repo_id})}"


def _check(query: str, sort: str, author: str) -> tuple[str, str]:
    query, author = (query or "").strip(), (author or "").strip()
    if sort not in SORTS:
        raise DiscoverError("invalid", f"Unknown sort {sort[:40]!r}: use one of {', '.join(SORTS)}.")
    if len(query) > MAX_QUERY_LENGTH:
        raise DiscoverError("invalid", f"The search is too long (at most {MAX_QUERY_LENGTH} characters).")
    if author and not all(c.isalnum() or c in "-_." for c in author):
        raise DiscoverError("invalid", "An author is a Hub user or organisation name (letters, digits, -_.).")
    return query, author


def _cache_key(*parts: Any, credential: HubCredential | None) -> str:
    # Per token: private repos one token sees must not show up in another's results. The credential's id and
    # its ciphertext (which changes with the token) name it without the token itself reaching the cache.
    who = (
        f"{credential.pk}:{hashlib.sha256(credential.token_ciphertext.encode()).hexdigest()}"
        if credential is not None
        else "anonymous"
    )
    raw = json.dumps([settings.HF_ENDPOINT, *parts, who])
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


def _listing(
    query: str, sort: str, author: str, mlx_only: bool, credential: HubCredential | None, cursor: str
) -> tuple[list[HubModel], str, bool]:
    """One page of the Hub's listing for one token: (models, next cursor, from the cache)."""
    key = _cache_key("list", query.lower(), sort, author.lower(), mlx_only, cursor, credential=credential)
    cached = read_cache(key)
    if cached is not None:
        return [HubModel(**m) for m in cached["models"]], cached["next"], True
    if read_cache(_outage_key()):
        raise _unavailable()
    token = _token(credential)
    install_http_guard()
    try:
        with hub_guard.deadline(float(settings.DISCOVER_TIMEOUT), "DISCOVER_TIMEOUT"):
            items, next_cursor = _fetch_listing(_listing_params(query, sort, author, mlx_only), token, cursor)
            models = [_hub_model(ModelInfo(**{"siblings": None, **item})) for item in items]
    except NoListing as exc:
        log.warning("discover: %s serves no model listing (%s)", settings.HF_ENDPOINT, exc)
        write_cache(_outage_key(), True, OUTAGE_BACKOFF_SECONDS)
        raise DiscoverError(
            "unavailable",
            f"Search is unavailable: the Hub endpoint ({settings.HF_ENDPOINT}) serves no model listing (a "
            "mirror such as olah knows repos only by name). Pull a repo you know by its id.",
        ) from exc
    except Exception as exc:
        status = _hub_status(exc)
        log.warning("discover: Hub search failed: %s (HTTP %s)", type(exc).__name__, status)
        if status in (401, 403) and token:
            # This user's token, not the Hub: no backoff for everyone else.
            raise DiscoverError(
                "invalid_credential",
                "The Hub refused your Hub token: replace it in Settings, or make none default to "
                "search without it.",
            ) from exc
        write_cache(_outage_key(), True, OUTAGE_BACKOFF_SECONDS)
        raise _unavailable() from exc
    write_cache(
        key, {"models": [asdict(m) for m in models], "next": next_cursor}, settings.DISCOVER_CACHE_TTL
    )
    return models, next_cursor, False


def _listing_params(query: str, sort: str, author: str, mlx_only: bool) -> dict[str, Any]:
    """The query huggingface_hub's `list_models` sends for these arguments (sort descending)."""
    params: dict[str, Any] = {"sort": SORTS[sort], "expand": EXPAND}
    if query:
        params["search"] = query
    if author:
        params["author"] = author
    if mlx_only:
        params["filter"] = ["mlx"]
    return params


def _fetch_listing(
    params: dict[str, Any], token: str | None, cursor: str
) -> tuple[list[dict[str, Any]], str]:
    """Up to DISCOVER_MAX_RESULTS listing entries from `cursor`, following the Hub's `Link: rel="next"` pages
    (`limit` is the Hub's page size). Returns them and the cursor after the last one ("" at the end).

    huggingface_hub's `list_models` follows the pages too, but never says where it stopped: paging on needs the
    cursor. Each next page is asked of HF_ENDPOINT with that cursor, never at the URL the Hub named."""
    wanted = settings.DISCOVER_MAX_RESULTS
    headers = build_hf_headers(token=token or False)
    url = f"{settings.HF_ENDPOINT}/api/models"
    items: list[dict[str, Any]] = []
    for _ in range(MAX_LISTING_REQUESTS):
        ask = {**params, "limit": wanted - len(items), **({"cursor": cursor} if cursor else {})}
        response = http_backoff("GET", url, params=ask, headers=headers)
        if response.status_code in (404, 405, 501) or response.headers.get("X-Error-Code") == "RepoNotFound":
            # olah (online) takes /api/models for a repo named "api/models": 401 RepoNotFound, whatever the
            # token; a token the Hub refuses is a 401 without that code.
            raise NoListing(f"HTTP {response.status_code}")
        hf_raise_for_status(response)
        try:
            page = response.json()
        except ValueError:
            page = None
        if not isinstance(page, list):
            # olah answers /api/models with an empty 200 (its file route): it serves repos by name only.
            raise NoListing("not a JSON list")
        items.extend(i for i in page[: wanted - len(items)] if isinstance(i, dict) and i.get("id"))
        cursor = _next_cursor(response.links.get("next", {}).get("url"))
        if not cursor or len(items) >= wanted:
            break
    return items, cursor


def _next_cursor(next_url: str | None) -> str:
    if not next_url:
        return ""
    cursor = parse_qs(urlsplit(next_url).query).get("cursor", [""])[-1]
    return cursor if _CURSOR.fullmatch(cursor or "") else ""


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
    snapshots = snapshot_list(user=user, statuses=[Snapshot.Status.READY]).filter(
        repository__repo_id__in=[m.repo_id for m in models]
    )
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
