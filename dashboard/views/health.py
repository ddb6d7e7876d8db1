from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from dashboard.views.nodes_view import node_cards
from models_app.services.health import health_for


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """For scripts and load balancers: 200 when every component is up, 503 otherwise. No login: anonymous
    callers get ok / not ok per component and nothing else; a signed-in user gets what the health page shows
    them."""
    report = health_for(request.user)
    return JsonResponse(report, status=200 if report["ok"] else 503)


@login_required
def health_page(request: HttpRequest) -> HttpResponse:
    health = health_for(request.user)
    nodes = node_cards(health["nodes"])
    context = {"health": health, "nodes": nodes, "nodes_down": any(n["state"] != "up" for n in nodes)}
    return render(request, "dashboard/health.html", context)
