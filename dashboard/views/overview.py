"""The overview: disk, live downloads, loaded models, workers, recent usage, updates."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.views.downloads import TEMPLATE_JOB
from dashboard.views.inference_status import loaded_models
from dashboard.views.nodes_view import node_cards
from models_app.models import Repository, Snapshot
from models_app.selectors.cache import cache_totals
from models_app.selectors.jobs import job_list
from models_app.selectors.snapshots import snapshot_list
from models_app.services.health import health_for
from models_app.services.usage import usage_report

ACTIVE_LIMIT = 8
UPDATES_LIMIT = 8


def disk_pictures(caches: list[dict[str, Any]], model_bytes: dict[str, int]) -> list[dict[str, Any]]:
    """Per cache root: models vs everything else on the disk vs free, as donut segments."""
    pictures = []
    for cache in caches:
        disk = cache["disk"]
        models = min(model_bytes.get(cache["name"], 0), disk["used"])
        other = max(disk["used"] - models, 0)
        pictures.append(
            {
                **cache,
                "script_id": f"disk-{cache['name']}",
                "models": models,
                "other": other,
                "percent_used": round(100 * disk["used"] / disk["total"]) if disk["total"] else 0,
                "segments": [
                    {"name": "Models", "value": models, "color": "--c1"},
                    {"name": "Other files", "value": other, "color": "--c7"},
                    {"name": "Free", "value": disk["free"], "color": "--line"},
                ],
            }
        )
    return pictures


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    user = request.user
    health = health_for(user)
    # Disk is shared: the bytes every model on this node takes, whoever pulled it (user=None).
    model_bytes = {root.name: root.size_bytes for root in cache_totals(user=None).roots}
    counts = snapshot_list(user=user).aggregate(
        total=Count("id"),
        ready=Count("id", filter=Q(status=Snapshot.Status.READY)),
        problems=Count("id", filter=Q(status__in=[Snapshot.Status.INVALID, Snapshot.Status.MISSING])),
    )
    active = list(job_list(user=user, active=True)[:ACTIVE_LIMIT])
    updates = list(Repository.objects.visible_to(user).filter(update_available=True)[:UPDATES_LIMIT])
    ready_by_node = dict(
        snapshot_list(user=user, statuses=[Snapshot.Status.READY])
        .values("node")
        .annotate(n=Count("id"))
        .values_list("node", "n")
    )
    report = usage_report(user=user, days=7)
    queues = health["queues"]
    context = {
        "health": health,
        "workers_ok": sum(1 for q in queues.values() if q["ok"]),
        "workers_total": len(queues),
        "disks": disk_pictures(health["cache"], model_bytes),
        "counts": counts,
        "active_jobs": active,
        "template_job": TEMPLATE_JOB,
        "loaded": loaded_models(user),
        "nodes": node_cards(health["nodes"], ready_by_node),
        "updates": updates,
        "usage": report,
        "usage_chart": report.chart_data(),
    }
    return render(request, "dashboard/overview.html", context)
