"""Pull: a form, a preview of what the pull would do (plan service), then Start (hub service)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from dashboard.forms import PullForm
from models_app.services import credentials, hub
from models_app.services import plan as plan_service
from models_app.services.cache_layout import CacheError
from models_app.services.errors import DownloadError


@login_required
def pull(request: HttpRequest) -> HttpResponse:
    """GET: the form (prefilled from ?repo=&revision=; with &preview=1 also its plan). POST action=preview:
    the plan. POST action=start: create the job and go watch it on the Downloads page."""
    user = request.user
    plan = None
    if request.method != "POST":
        initial = {k: request.GET[k] for k in ("repo", "revision") if request.GET.get(k)}
        if not (initial.get("repo") and request.GET.get("preview")):
            return render(request, "dashboard/pull.html", {"form": PullForm(user=user, initial=initial)})
        # ?repo=...&preview=1 (Discover's links): the plan at once, as the Preview button would show it. A
        # plan only reads metadata, so a GET may compute it.
        form = PullForm({"revision": "main", **initial}, user=user)
    else:
        form = PullForm(request.POST, user=user)
    if form.is_valid():
        data = form.cleaned_data
        repo_id, revision = data["repo_id"], data["revision"]
        # No token chosen: the user's default one, as the pull itself will use.
        credential = data["credential"] or credentials.default_credential(user)
        try:
            if request.POST.get("action") == "start":
                plan_service.check_patterns(
                    repo_id, revision, allow_patterns=data["allow_patterns"], credential=credential
                )
                job = hub.download_model(
                    repo_id,
                    revision,
                    credential=credential,
                    force=data["force"],
                    allow_patterns=data["allow_patterns"],
                    user=user,
                    node=data["node"] or None,
                )
                token = f" with the Hub token {credentials.label(credential)}" if credential else ""
                picked = f" on {job.node}. {job.node_choice}" if job.node_choice else "."
                messages.success(request, f"Pulling {repo_id}@{revision}{token}{picked}")
                return redirect(f"/downloads/?job={job.id}#job-{job.id}")
            plan = plan_service.plan_pull(
                repo_id,
                revision,
                credential=credential,
                allow_patterns=data["allow_patterns"],
                node=data["node"] or None,
            )
        except DownloadError as err:
            form.add_download_error(err, repo_id)
        except CacheError as err:
            form.add_error(None, f"{err.message} {err.action}".strip())
    status = 400 if form.errors else 200
    return render(request, "dashboard/pull.html", {"form": form, "plan": plan}, status=status)
