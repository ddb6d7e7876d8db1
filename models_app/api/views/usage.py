"""Usage aggregates (by day, model, user and source) from the usage service's report."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from models_app.api.serializers import UsageQuerySerializer, UsageReportSerializer
from models_app.api.views.common import ApiView, errors
from models_app.services.usage import usage_report


@extend_schema(tags=["usage"])
class UsageView(ApiView):
    serializer_class = UsageReportSerializer
    pagination_class = None

    @extend_schema(
        operation_id="usage",
        summary="Completions and tokens over the last days; yours, or everyone's for staff",
        parameters=[UsageQuerySerializer],
        responses={200: UsageReportSerializer, **errors(400, 403, 404)},
    )
    def get(self, request: Request) -> Response:
        query = UsageQuerySerializer(data=request.query_params.dict())  # "days=" is an error, not a default
        query.is_valid(raise_exception=True)
        report = usage_report(
            user=request.user,
            days=query.validated_data["days"],
            snapshot_id=query.validated_data.get("snapshot_id"),
            of_user=_of_user(request, query.validated_data.get("user")),
        )
        return Response(_as_api(report, query.validated_data["days"]))


def _of_user(request: Request, username: str | None):  # type: ignore[no-untyped-def]
    """The user whose usage staff asked for. Anyone else may name only themselves."""
    if username is None:
        return None
    if not request.user.is_staff and username != request.user.get_username():
        raise PermissionDenied("Only staff can see another user's usage.")
    try:
        return get_user_model().objects.get(username=username)
    except get_user_model().DoesNotExist:
        raise NotFound(f"No user named {username!r}.") from None


def _as_api(report: Any, days: int) -> dict[str, Any]:
    """The report is shaped for charts (one list per series); the API gives one object per day and model."""
    by_day = []
    for i, day in enumerate(report.days):
        by_day.append(
            {
                "day": day,
                "requests": report.requests[i],
                "ttft_ms": report.ttft_ms[i],
                "tokens_per_second": report.tokens_per_second[i],
                "tokens_by_model": {
                    s["name"]: s["values"][i] for s in report.tokens_by_model if s["values"][i]
                },
            }
        )
    by_model = [{"model": s["name"], "tokens": sum(s["values"])} for s in report.tokens_by_model]
    totals = {
        k: report.totals.get(k, 0) for k in ("requests", "prompt_tokens", "completion_tokens", "tokens")
    }
    return {
        "days": days,
        "totals": totals,
        "by_day": by_day,
        "by_model": by_model,
        "by_source": report.by_source,
        "by_user": report.by_user,
    }
