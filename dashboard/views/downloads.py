"""Downloads: active jobs (live over ws/downloads/), history with errors, cancel and retry."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from dashboard.forms import error_action
from dashboard.views.common import paginate
from models_app.models import DownloadJob
from models_app.selectors.jobs import job_get, job_list
from models_app.services import errors, hub
from models_app.services.errors import DownloadError

ACTIVE_LIMIT = 50
# The markup downloads.js clones for a job that starts while the page is open (ids filled in by the script).
TEMPLATE_JOB = {
    "id": "__ID__",
    "state": "queued",
    "repository": {"repo_id": ""},
    "revision": "",
    "percent": 0,
    "bytes_done": 0,
    "eta_seconds": None,
}


def _get_job(request: HttpRequest, pk: int) -> DownloadJob:
    job = job_get(user=request.user, job_id=pk)
    if job is None:
        raise Http404("No such download.")
    return job


def attach_actions(jobs: list[DownloadJob]) -> list[DownloadJob]:
    """What to do about each failed job, from its error code (a refused token's reads the stored tokens)."""
    for job in jobs:
        job.action = None  # type: ignore[attr-defined]
        if job.state == DownloadJob.State.FAILED and job.error_code in errors.CODES:
            err = DownloadError(
                job.error_code,
                job.error_message,
                repo_id=job.repository.repo_id,
                action=errors.action_for_job(job),  # a refused token's names the stored tokens
            )
            job.action = error_action(err, job.repository.repo_id)  # type: ignore[attr-defined]
    return jobs


@login_required
def download_list(request: HttpRequest) -> HttpResponse:
    active = attach_actions(list(job_list(user=request.user, active=True)[:ACTIVE_LIMIT]))
    page, query = paginate(request, job_list(user=request.user, active=False))
    attach_actions(page.object_list)  # type: ignore[arg-type]
    highlight = request.GET.get("job", "")
    return render(
        request,
        "dashboard/downloads.html",
        {
            "active": active,
            "page": page,
            "query": query,
            "highlight": int(highlight) if highlight.isdigit() else None,
            "show_user": request.user.is_staff,
            "template_job": TEMPLATE_JOB,
        },
    )


@login_required
@require_POST
def download_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job(request, pk)
    if job.is_active:
        hub.cancel_job(job, by=request.user)
        messages.success(request, f"Cancelling {job.repository.repo_id}.")
    else:
        messages.info(request, f"{job.repository.repo_id} already {job.get_state_display().lower()}.")
    return redirect("downloads")


@login_required
@require_POST
def download_retry(request: HttpRequest, pk: int) -> HttpResponse:
    job = _get_job(request, pk)
    try:
        new = hub.retry_job(job)
    except DownloadError as err:
        messages.error(request, f"{err.message} {err.action}")
        return redirect("downloads")
    messages.success(request, f"Retrying {job.repository.repo_id}.")
    return redirect(f"/downloads/?job={new.id}#job-{new.id}")
