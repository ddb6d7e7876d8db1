"""Discover's second look at one repo, for a result whose listing entry said nothing of its weights (a repo the
Hub has no safetensors counts for, or a mirror whose listing lacks them): its model info, then, when that has
no counts either, the parameter counts in its .safetensors headers (read with HTTP Range requests, never the
weights). The page asks for these after it shows the listing, a few at a time, and fills each row in.

Cached like the listing (Django's cache, DISCOVER_CACHE_TTL) per repo and token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from django.conf import settings
from huggingface_hub import HfApi

from models_app.models import HubCredential
from models_app.services import discover, hub_guard
from models_app.services import discover_meta as meta
from models_app.services.discover import DiscoverError, DiscoverResult, HubModel
from models_app.services.hub_progress import install_http_guard
from models_app.services.validation import validate_repo_id

log = logging.getLogger(__name__)


def details(repo_id: str, *, credentials: Sequence[HubCredential] = (), user: Any = None) -> DiscoverResult:
    """One repo's result with its sizes and verdict. Each of the user's tokens is tried in turn (the repo may
    be private to any of them). Raises DiscoverError: "invalid", "not_found" or "unavailable"."""
    return discover._local_view([hub_details(repo_id, credentials)], user)[0]


def hub_details(repo_id: str, credentials: Sequence[HubCredential]) -> HubModel:
    """What the Hub says of one repo, from the cache when it was asked within DISCOVER_CACHE_TTL."""
    try:
        repo_id = validate_repo_id(repo_id)
    except Exception as exc:
        raise DiscoverError("invalid", str(getattr(exc, "message", exc))) from None
    for credential in list(credentials) or [None]:
        key = discover._cache_key("details", repo_id, credential=credential)
        cached = discover.read_cache(key)
        if cached is not None:
            return HubModel(**cached)
        try:
            model = _look(repo_id, credential)
        except _Refused:
            continue
        discover.write_cache(key, asdict(model), settings.DISCOVER_CACHE_TTL)
        return model
    raise DiscoverError("not_found", f"No repo {repo_id} on the Hub that your Hub tokens can read.")


class _Refused(Exception):
    """This token cannot see the repo (401/403/404): the next token may."""


def _look(repo_id: str, credential: HubCredential | None) -> HubModel:
    token = discover._token(credential)
    api = HfApi(endpoint=settings.HF_ENDPOINT)
    install_http_guard()
    try:
        with hub_guard.deadline(float(settings.DISCOVER_TIMEOUT), "DISCOVER_TIMEOUT"):
            # revision=main: olah serves model info only by revision.
            info = api.model_info(repo_id, revision="main", expand=discover.EXPAND, token=token or False)
            model = discover._hub_model(info)
            if model.weights_bytes is None:
                _from_safetensors_headers(api, model, info.sha or "main", token)
            return model
    except Exception as exc:
        status = discover._hub_status(exc)
        if status in (401, 403, 404):
            raise _Refused() from exc
        log.warning("discover: details of %s failed: %s (HTTP %s)", repo_id, type(exc).__name__, status)
        raise DiscoverError(
            "unavailable", f"The Hub ({settings.HF_ENDPOINT}) did not answer about {repo_id}; try again."
        ) from exc


def _from_safetensors_headers(api: HfApi, model: HubModel, revision: str, token: str | None) -> None:
    """Sizes from the per-dtype counts in the weights' headers (a repo without .safetensors keeps none)."""
    from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError

    try:
        found = api.get_safetensors_metadata(model.repo_id, revision=revision, token=token or False)
    except (NotASafetensorsRepoError, SafetensorsParsingError):
        return
    counts = {"parameters": dict(found.parameter_count)}
    model.weights_bytes = meta.weight_bytes(counts)
    model.parameters = meta.parameter_count(counts, meta.bits(model.quantization))


def complete(
    results: list[DiscoverResult], *, credentials: Sequence[HubCredential] = (), user: Any = None
) -> list[DiscoverResult]:
    """The results with those whose listing lacked sizes checked (DISCOVER_DETAILS_CONCURRENCY at a time), for
    callers that answer all at once (the CLI). A check that fails leaves its result as it was."""
    from concurrent.futures import ThreadPoolExecutor

    pending = [r.hub for r in results if r.hub.weights_bytes is None]
    if not pending:
        return results

    def one(listed: HubModel) -> HubModel:
        try:
            return hub_details(listed.repo_id, credentials)
        except DiscoverError:
            return listed

    # The threads only ask the Hub; the local view (the database) is worked out here, in this thread.
    with ThreadPoolExecutor(max_workers=settings.DISCOVER_DETAILS_CONCURRENCY) as pool:
        checked = {m.repo_id: m for m in pool.map(one, pending)}
    return discover._local_view([checked.get(r.hub.repo_id, r.hub) for r in results], user)
