"""The overview: disk, live downloads, loaded models, workers, recent usage, updates."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.views.downloads import TEMPLATE_JOB
from dashboard.views.inference_status import loaded_models
from dashboard.views.nodes_view import node_cards
from models_app.models import DownloadJob, Repository, Snapshot
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
    # Disk is shared: the bytes every model on this node takes, whoever pulled it.
    on_node = Snapshot.objects.filter(node=settings.NODE_NAME).exclude(status=Snapshot.Status.DELETED)
    model_bytes = dict(
        on_node.values("cache_root").annotate(total=Sum("size_bytes")).values_list("cache_root", "total")
    )
    counts = (
        Snapshot.objects.visible_to(user)
        .exclude(status=Snapshot.Status.DELETED)
        .aggregate(
            total=Count("id"),
            ready=Count("id", filter=Q(status=Snapshot.Status.READY)),
            problems=Count("id", filter=Q(status__in=[Snapshot.Status.INVALID, Snapshot.Status.MISSING])),
        )
    )
    active = list(DownloadJob.objects.visible_to(user).active().select_related("repository")[:ACTIVE_LIMIT])
    updates = list(Repository.objects.visible_to(user).filter(update_available=True)[:UPDATES_LIMIT])
    ready_by_node = dict(
        Snapshot.objects.visible_to(user)
        .filter(status=Snapshot.Status.READY)
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
