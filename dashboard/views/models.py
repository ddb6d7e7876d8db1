"""Models: the list (search, sort, filter), a model's page, and its actions (verify, update, delete,
load/unload). Each action validates, calls one service or enqueues one task, and redirects."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from dashboard.forms import ModelFilterForm
from dashboard.views.common import paginate
from dashboard.views.inference_status import loaded_ids, loaded_models
from models_app.models import DownloadJob, Snapshot
from models_app.selectors.jobs import job_list
from models_app.selectors.snapshots import snapshot_get, snapshot_list
from models_app.services import cache, hub, inference
from models_app.services.cache_layout import CacheError, file_record
from models_app.services.errors import DownloadError
from models_app.services.nodes import down_nodes
from models_app.services.usage import usage_report
from models_app.services.verify import verify_model


def _get_snapshot(request: HttpRequest, pk: int) -> Snapshot:
    # Someone else's private model is a 404, not a 403: its existence is not ours to reveal.
    snapshot = snapshot_get(user=request.user, snapshot_id=pk)
    if snapshot is None:
        raise Http404("No such model.")
    return snapshot


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    form = ModelFilterForm(request.GET or None)
    filters = form.cleaned_data if form.is_valid() else {}
    snapshots = snapshot_list(
        user=request.user,
        query=filters.get("q"),
        statuses=[filters["status"]] if filters.get("status") else None,
        updates_only=bool(filters.get("updates")),
    )
    order = [F(o[1:]).desc(nulls_last=True) if o.startswith("-") else F(o).asc() for o in form.order_by()]
    page, query = paginate(request, snapshots.order_by(*order, "-id"))
    loaded = loaded_ids()
    sort_query = request.GET.copy()
    for key in ("page", "sort"):
        sort_query.pop(key, None)
    return render(
        request,
        "dashboard/models.html",
        {
            "form": form,
            "page": page,
            "query": query,
            "sort_query": f"{sort_query.urlencode()}&" if sort_query else "",
            "loaded": loaded,
            "down": down_nodes(),
            "sort": (form.cleaned_data.get("sort") if form.is_valid() else "") or "name",
            "filtered": bool(request.GET.get("q") or request.GET.get("status") or request.GET.get("updates")),
        },
    )


@login_required
def model_detail(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _get_snapshot(request, pk)
    revisions = list(
        snapshot_list(user=request.user, repository_id=snapshot.repository_id).order_by("-created_at")
    )
    jobs = list(job_list(user=request.user, repository_id=snapshot.repository_id)[:5])
    files = sorted((file_record(entry) for entry in snapshot.files or []), key=lambda f: f.path)
    loaded = next((m for m in loaded_models(request.user) if m["snapshot_id"] == snapshot.id), None)
    report = usage_report(user=request.user, days=30, snapshot_id=snapshot.id)
    return render(
        request,
        "dashboard/model_detail.html",
        {
            "snapshot": snapshot,
            "repo": snapshot.repository,
            "revisions": revisions,
            "jobs": jobs,
            "files": files,
            "loaded": loaded,
            "node_down": snapshot.node in down_nodes(),
            "usage": report,
            "usage_chart": report.chart_data(),
        },
    )


@login_required
@require_POST
def model_verify(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _get_snapshot(request, pk)
    try:
        result = verify_model(snapshot)
    except CacheError as err:
        messages.error(request, f"{err.message} {err.action}".strip())
        return redirect("model_detail", pk=pk)
    if result.ok:
        messages.success(request, f"Verified {result.files_checked} files: every file matches the Hub.")
    else:
        problems = len(result.missing) + len(result.mismatched)
        messages.error(
            request, f"Verification failed: {problems} file(s) missing or different. Pull it again."
        )
    return redirect("model_detail", pk=pk)


def _last_credential(request: HttpRequest, snapshot: Snapshot):  # type: ignore[no-untyped-def]
    """The user's own token that last pulled this repo: an update of a private model needs it again."""
    job = (
        DownloadJob.objects.filter(
            repository=snapshot.repository, requested_by=request.user, credential__owner=request.user
        )
        .select_related("credential")
        .first()
    )
    return job.credential if job else None


@login_required
@require_POST
def model_update(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _get_snapshot(request, pk)
    try:
        job = hub.download_model(
            snapshot.repository.repo_id,
            snapshot.ref or "main",
            credential=_last_credential(request, snapshot),
            cache=snapshot.cache_root,
            user=request.user,
        )
    except DownloadError as err:
        messages.error(request, f"{err.message} {err.action}")
        return redirect("model_detail", pk=pk)
    messages.success(request, f"Pulling {job.repository.repo_id}@{job.revision} again.")
    return redirect(f"/downloads/?job={job.id}#job-{job.id}")


@login_required
def model_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: what deleting frees (a dry run); POST: delete."""
    snapshot = _get_snapshot(request, pk)
    repo_id = snapshot.repository.repo_id
    dry_run = request.method != "POST"
    try:
        plan = cache.delete_model(repo_id, snapshot.commit_sha, user=request.user, dry_run=dry_run)
    except CacheError as err:
        messages.error(request, f"{err.message} {err.action}".strip())
        return redirect("model_detail", pk=pk)
    if dry_run:
        return render(request, "dashboard/model_delete.html", {"snapshot": snapshot, "plan": plan})
    messages.success(request, f"Deleted {repo_id}@{snapshot.short_sha}.")
    return redirect("models")


@login_required
@require_POST
def model_load(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _get_snapshot(request, pk)
    if snapshot.status != Snapshot.Status.READY:
        messages.error(request, "Only a ready model can be loaded.")
        return redirect("model_detail", pk=pk)
    try:
        inference.request_load(snapshot.id, user=request.user)
    except inference.InferenceUnavailable as err:
        messages.error(request, str(err))
    else:
        messages.success(
            request, f"Loading {snapshot.repository.repo_id}: it shows here once it is in memory."
        )
    return redirect("model_detail", pk=pk)


@login_required
@require_POST
def model_unload(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = _get_snapshot(request, pk)
    try:
        sent = inference.request_unload(snapshot.id, user=request.user)
    except (inference.InferenceUnavailable, inference.UnloadRefused) as err:
        messages.error(request, str(err))
    else:
        if sent:
            messages.success(request, f"Unloading {snapshot.repository.repo_id}.")
        else:
            messages.info(request, f"{snapshot.repository.repo_id} is not loaded.")
    return redirect("model_detail", pk=pk)
