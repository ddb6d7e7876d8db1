from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

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
    return render(request, "dashboard/health.html", {"health": health_for(request.user)})
