"""Usage: tokens per day per model, TTFT and tokens/s trends, by source, and by user for staff."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from models_app.services.usage import usage_report

PERIODS = (7, 14, 30, 90)


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    days = request.GET.get("days", "")
    days = int(days) if days.isdigit() and int(days) in PERIODS else 14
    report = usage_report(user=request.user, days=days)
    return render(
        request,
        "dashboard/usage.html",
        {"usage": report, "usage_chart": report.chart_data(), "days": days, "periods": PERIODS},
    )
