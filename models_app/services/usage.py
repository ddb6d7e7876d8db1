"""Usage aggregates for the dashboard charts: tokens per day per model, TTFT and tokens/s trends, and totals
by user and by source.

Every figure comes from a handful of GROUP BY queries, so a page costs the same number of queries with ten
usage rows or a million. A user sees their own usage (browser or through their API keys); staff see everyone's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Avg, Case, Count, IntegerField, Q, QuerySet, Sum, Value, When
from django.db.models.expressions import Expression
from django.utils import timezone

from models_app.models import Usage

# Beyond this many models a stacked chart is unreadable: the rest are summed into one "other" series.
MAX_SERIES = 6
OTHER = "other"


@dataclass
class UsageReport:
    days: list[dt.date]
    # [{"name": repo id, "values": [tokens per day]}], biggest first.
    tokens_by_model: list[dict[str, Any]]
    ttft_ms: list[float | None]  # mean time to first token per day
    tokens_per_second: list[float | None]  # mean generation speed per day
    requests: list[int]  # completions per day
    by_user: list[dict[str, Any]] = field(default_factory=list)  # staff only
    by_source: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.totals.get("requests")

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Tokens per day per model as table rows, newest day first (the charts' text alternative)."""
        return [
            {"day": day, "values": [s["values"][i] for s in self.tokens_by_model]}
            for i, day in reversed(list(enumerate(self.days)))
        ]

    def chart_data(self) -> dict[str, Any]:
        """The JSON the page's charts draw from (json_script)."""
        labels = [d.strftime("%b %d") for d in self.days]
        return {
            "tokens": {"labels": labels, "series": self.tokens_by_model},
            "ttft": {"labels": labels, "series": [{"name": "TTFT (ms)", "values": self.ttft_ms}]},
            "speed": {"labels": labels, "series": [{"name": "tokens/s", "values": self.tokens_per_second}]},
        }


def visible_usage(user) -> QuerySet[Usage]:  # type: ignore[no-untyped-def]
    usage = Usage.objects.all()
    if user.is_staff:
        return usage
    # API usage may be recorded against the key only: a key acts as its user.
    return usage.filter(Q(user=user) | Q(api_key__user=user))


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def usage_report(
    *,
    user,
    days: int = 14,
    snapshot_id: int | None = None,
    of_user=None,
    now: dt.datetime | None = None,
) -> UsageReport:  # type: ignore[no-untyped-def]
    """Usage over the last `days` days (today included), in the current time zone, as `user` may see it,
    narrowed to one model (`snapshot_id`) or to one user's completions (`of_user`: staff looking at a
    colleague; for anyone else it can only narrow their own usage). Four queries (three for non-staff),
    whatever the number of rows."""
    day_list, midnights = _days(days, now or timezone.now())
    rows = visible_usage(user).filter(created_at__gte=midnights[0])
    if snapshot_id is not None:
        rows = rows.filter(snapshot_id=snapshot_id)
    if of_user is not None:
        rows = rows.filter(Q(user=of_user) | Q(api_key__user=of_user))
    rows = rows.annotate(day=_day_index(midnights, 0, days))
    series = _tokens_by_model(rows, days)
    ttft, speed, requests = _trends(rows, days)
    by_source, totals = _by_source(rows)
    return UsageReport(
        days=day_list,
        tokens_by_model=series,
        ttft_ms=ttft,
        tokens_per_second=speed,
        requests=requests,
        by_user=_by_user(rows) if user.is_staff else [],  # only staff compare users
        by_source=by_source,
        totals=totals,
    )


def _days(days: int, now: dt.datetime) -> tuple[list[dt.date], list[dt.datetime]]:
    """The last `days` local dates up to today, and the local midnights from the first day to tomorrow: day i
    is [midnights[i], midnights[i + 1])."""
    tz = timezone.get_current_timezone()
    today = timezone.localtime(now, tz).date()
    first = today - dt.timedelta(days=days - 1)
    day_list = [first + dt.timedelta(days=i) for i in range(days)]
    midnights = [dt.datetime.combine(d, dt.time.min, tzinfo=tz) for d in [*day_list, today + dt.timedelta(1)]]
    return day_list, midnights


def _tokens_by_model(rows: QuerySet[Usage], days: int) -> list[dict[str, Any]]:
    """Tokens per day per model, biggest first; beyond MAX_SERIES models the rest summed as OTHER."""
    per_model: dict[str, list[int]] = {}
    for row in rows.values("day", "snapshot__repository__repo_id").annotate(
        prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    ):
        if row["day"] >= days:
            continue  # after today: a clock that was ahead
        name = row["snapshot__repository__repo_id"] or "(deleted model)"
        per_model.setdefault(name, [0] * days)[row["day"]] += (row["prompt"] or 0) + (row["completion"] or 0)
    ranked = sorted(per_model.items(), key=lambda item: -sum(item[1]))
    series = [{"name": name, "values": values} for name, values in ranked[:MAX_SERIES]]
    if len(ranked) > MAX_SERIES:
        rest = [sum(col) for col in zip(*(values for _, values in ranked[MAX_SERIES:]), strict=True)]
        series.append({"name": OTHER, "values": rest})
    return series


def _trends(rows: QuerySet[Usage], days: int) -> tuple[list[float | None], list[float | None], list[int]]:
    """Per day: mean time to first token, mean generation speed, number of completions."""
    ttft: list[float | None] = [None] * days
    speed: list[float | None] = [None] * days
    requests = [0] * days
    for row in rows.values("day").annotate(ttft=Avg("ttft_ms"), tps=Avg("tokens_per_second"), n=Count("id")):
        if (i := row["day"]) < days:
            ttft[i], speed[i], requests[i] = _round(row["ttft"]), _round(row["tps"]), row["n"]
    return ttft, speed, requests


def _totals_fields() -> dict[str, Any]:
    return {
        "requests": Count("id"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "ttft_ms": Avg("ttft_ms"),
        "tokens_per_second": Avg("tokens_per_second"),
    }


def _by_source(rows: QuerySet[Usage]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Figures by source (browser / API), and the totals they add up to."""
    by_source = []
    totals: dict[str, Any] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    labels = dict(Usage.Source.choices)
    for row in rows.values("source").annotate(**_totals_fields()).order_by("source"):
        row = _clean(row)
        row["label"] = labels.get(row["source"], row["source"])
        by_source.append(row)
        for key in ("requests", "prompt_tokens", "completion_tokens"):
            totals[key] += row[key]
    totals["tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return by_source, totals


def _by_user(rows: QuerySet[Usage]) -> list[dict[str, Any]]:
    """Figures by user, the biggest writer of completions first."""
    by_user = [
        _clean(row)
        for row in rows.values("user__username").annotate(**_totals_fields()).order_by("-completion_tokens")
    ]
    for row in by_user:
        row["username"] = row.pop("user__username") or "(no user)"
    return by_user


def _day_index(midnights: list[dt.datetime], lo: int, hi: int) -> Expression:
    """The day a row falls in (an index into midnights), as a balanced tree of comparisons: a few comparisons
    per row, in the database. TruncDate with a time zone calls a Python function per row on SQLite: the report
    took 1.5 s for 14 days of 100,000 rows that way, 0.56 s this way (0.28 s with the covering index; all
    measured on this 2-core machine). Exact across DST changes: the boundaries are the real local midnights."""
    if lo == hi:
        return Value(lo, output_field=IntegerField())
    mid = (lo + hi + 1) // 2
    return Case(
        When(created_at__gte=midnights[mid], then=_day_index(midnights, mid, hi)),
        default=_day_index(midnights, lo, mid - 1),
        output_field=IntegerField(),
    )


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    for key in ("prompt_tokens", "completion_tokens", "requests"):
        row[key] = row.get(key) or 0
    row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    row["ttft_ms"] = _round(row.get("ttft_ms"))
    row["tokens_per_second"] = _round(row.get("tokens_per_second"))
    return row
