"""Download jobs a user may see: the Downloads page, the Overview, a model's page, `/api/v1/pulls` and the
downloads websocket all read them here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet

from models_app.models import DownloadJob


def job_list(
    *,
    user: Any,
    active: bool | None = None,
    state: str | None = None,
    repository_id: int | None = None,
    active_or_finished_since: datetime | None = None,
) -> QuerySet[DownloadJob]:
    """Jobs `user` may see (DownloadJob.objects.visible_to: staff every job, anyone else those they asked
    for; None: every job), newest first, with the repository, requester and token name the pages show.

    `active`: True keeps queued and running jobs, False the finished ones. `active_or_finished_since` keeps
    the active ones and those that ended at or after that moment (what a page that was away has missed)."""
    jobs = DownloadJob.objects.select_related("repository", "requested_by", "credential")
    if user is not None:
        jobs = jobs.visible_to(user)
    if active is True:
        jobs = jobs.active()
    elif active is False:
        jobs = jobs.exclude(state__in=DownloadJob.ACTIVE_STATES)
    if state is not None:
        jobs = jobs.filter(state=state)
    if repository_id is not None:
        jobs = jobs.filter(repository_id=repository_id)
    if active_or_finished_since is not None:
        jobs = jobs.filter(
            Q(state__in=DownloadJob.ACTIVE_STATES) | Q(finished_at__gte=active_or_finished_since)
        )
    return jobs.order_by("-created_at", "-id")


def job_get(*, user: Any, job_id: int) -> DownloadJob | None:
    """One job `user` may see, or None (another user's job is "not found": ids reveal nothing)."""
    return job_list(user=user).filter(pk=job_id).first()
