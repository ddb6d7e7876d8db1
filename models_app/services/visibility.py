"""Who may see a Hub repo in this app. The cache is shared and huggingface_hub serves cached files to anyone,
so the app decides (Repository.visible_to): a repo is public here only once the Hub has shown it to an
anonymous caller. Until then (first seen through a token, through a pull that failed, or imported from files
another tool downloaded) it is private: to the user who asked for it, or to staff alone when nobody did."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.utils import timezone

from models_app.models import Repository

log = logging.getLogger(__name__)

ANONYMOUS_CHECK_TIMEOUT = 10.0


def shown_to_anyone(repo_id: str) -> bool | None:
    """Whether the Hub shows repo_id to a caller without a token, as not private: True or False, or None when
    it gave no answer (a network error: nothing is proven either way)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    try:
        info = HfApi(endpoint=settings.HF_ENDPOINT).model_info(
            repo_id, token=False, timeout=ANONYMOUS_CHECK_TIMEOUT
        )
    except RepositoryNotFoundError:  # what the Hub answers an anonymous caller about a private repo (401)
        return False
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403, 404):
            return False
        log.warning("anonymous visibility check of %s failed: %s", repo_id, exc)
        return None
    except Exception as exc:  # connection errors vary by transport; no answer proves nothing
        log.warning("anonymous visibility check of %s failed: %s", repo_id, exc)
        return None
    return info.private is False


def record(repo: Repository, *, private: bool | None, gated: bool | None, token_used: bool) -> None:
    """Store what the Hub said about repo (in answer to a call made with a token, or without). A "public"
    seen through a token is checked again without one: only an anonymous caller's view proves it. A repo
    proven public belongs to everyone (no owner), as one pulled public always did."""
    fields: dict[str, Any] = {"updated_at": timezone.now()}
    if gated is not None:
        fields["gated"] = bool(gated)
    if private:
        fields["private"] = True
    elif private is False:
        proven = True if not token_used else shown_to_anyone(repo.repo_id)
        if proven:
            fields["private"] = False
            if not (gated if gated is not None else repo.gated):
                fields["owner"] = None
        elif proven is False:
            fields["private"] = True
        # None: no answer; what is stored stands until the next check.
    Repository.objects.filter(id=repo.id).update(**fields)
