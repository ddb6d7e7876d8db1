"""Cache: usage by repo, and a cleanup policy to preview and then run (staff: the cache is shared)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat

from dashboard.forms import CleanupForm
from models_app.selectors.cache import cache_totals, repo_usage_list
from models_app.services.cache_layout import CacheError
from models_app.services.cleanup import ORPHANED_SHARED, clean_cache, configured_policy
from models_app.services.health import disk_usage

TOP_REPOS = 15


def biggest_repos(repos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first TOP_REPOS of repo_usage_list, each with its share of the biggest one (the bars)."""
    top = repos[:TOP_REPOS]
    biggest = max((r["bytes"] or 0 for r in top), default=0)
    for row in top:
        row["percent"] = round(100 * (row["bytes"] or 0) / biggest, 1) if biggest else 0
    return top


@login_required
def cache_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    repos = repo_usage_list(user=user)
    totals = cache_totals(user=user, include_shared_store=True)
    # A server path maps the machine: staff only, as on the health page.
    roots = [
        {
            "name": root.name,
            "path": str(root.path) if user.is_staff else "",
            "disk": disk_usage(root.path),
            "shared": root.shared_store,
        }
        for root in totals.roots
    ]
    context = {
        "repos": biggest_repos(repos),
        "total": totals.size_bytes,
        "roots": roots,
        # Every repo the total counts, not only the TOP_REPOS shown.
        "repo_count": len(repos),
    }
    if not user.is_staff:
        # Read-only for everyone else: the cache is shared, so deleting from it is a staff decision.
        return render(
            request, "dashboard/cache.html", context, status=403 if request.method == "POST" else 200
        )

    form = CleanupForm(request.POST or None, initial=CleanupForm.initial_from_settings())
    plan = None
    if request.method == "POST" and form.is_valid():
        run = request.POST.get("action") == "run"
        if run and not form.cleaned_data["confirm"]:
            form.add_error("confirm", "Tick this box to confirm: deleted files are gone for good.")
            run = False
        try:
            plan = clean_cache(**form.policy(), dry_run=not run)
        except (CacheError, ValueError) as err:
            form.add_error(None, str(err))
        else:
            if run:
                freed = filesizeformat(plan.bytes_freed)
                messages.success(
                    request, f"Cleanup done: {len(plan.deleted)} item(s) removed, {freed} freed."
                )
                for skipped in plan.skipped:
                    messages.warning(request, f"Skipped {skipped}")
                return redirect("cache")
    elif request.method != "POST":
        # Partial files left by killed downloads show whatever the policy: preview with the saved policy.
        try:
            plan = clean_cache(**configured_policy().as_kwargs(), dry_run=True)
        except CacheError:
            plan = None
    context.update(
        form=form,
        plan=plan,
        orphans=[i for i in plan.items if i.kind == "incomplete" or i.reason == ORPHANED_SHARED]
        if plan
        else [],
        previewed=request.method == "POST" and plan is not None,
    )
    return render(request, "dashboard/cache.html", context, status=400 if form.errors else 200)
