"""Usage: tokens per day per model, TTFT and tokens/s trends, by source, and by user for staff (who can narrow
the page to one user)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from models_app.services.usage import usage_report

PERIODS = (7, 14, 30, 90)


@login_required
def usage_page(request: HttpRequest) -> HttpResponse:
    days = request.GET.get("days", "")
    days = int(days) if days.isdigit() and int(days) in PERIODS else 14
    # ?user= narrows staff's view to one colleague; anyone else only ever sees their own usage.
    of_user = None
    if request.user.is_staff and request.GET.get("user"):
        of_user = get_object_or_404(get_user_model(), username=request.GET["user"])
    report = usage_report(user=request.user, days=days, of_user=of_user)
    return render(
        request,
        "dashboard/usage.html",
        {
            "usage": report,
            "usage_chart": report.chart_data(),
            "days": days,
            "periods": PERIODS,
            "of_user": of_user,
        },
    )
