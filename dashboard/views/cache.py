"""Cache: usage by repo, and a cleanup policy to preview and then run (staff: the cache is shared)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Max, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat

from dashboard.forms import CleanupForm
from models_app.models import Snapshot
from models_app.services import shared_store
from models_app.services.cache_layout import CacheError
from models_app.services.cleanup import ORPHANED_SHARED, clean_cache, configured_policy
from models_app.services.health import disk_usage

TOP_REPOS = 15


def usage_by_repo(user) -> tuple[list[dict], int]:  # type: ignore[no-untyped-def]
    """The biggest repos the user may see, and the total: one GROUP BY."""
    rows = list(
        Snapshot.objects.visible_to(user)
        .filter(node=settings.NODE_NAME)
        .exclude(status=Snapshot.Status.DELETED)
        .values("repository__repo_id")
        .annotate(bytes=Sum("size_bytes"), revisions=Count("id"), last_used=Max("last_used_at"))
        .order_by("-bytes")
    )
    total = sum(r["bytes"] or 0 for r in rows)
    top = rows[:TOP_REPOS]
    biggest = max((r["bytes"] or 0 for r in top), default=0)
    for row in top:
        row["percent"] = round(100 * (row["bytes"] or 0) / biggest, 1) if biggest else 0
    return top, total


@login_required
def cache_page(request: HttpRequest) -> HttpResponse:
    user = request.user
    repos, total = usage_by_repo(user)
    # A server path maps the machine: staff only, as on the health page.
    roots = [
        {
            "name": n,
            "path": str(p) if user.is_staff else "",
            "disk": disk_usage(p),
            "shared": shared_store.summary(Path(p)),
        }
        for n, p in settings.CACHE_ROOTS.items()
    ]
    context = {"repos": repos, "total": total, "roots": roots, "repo_count": len(repos)}
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
