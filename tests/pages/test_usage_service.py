"""usage_report: the figures behind the Usage charts."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from models_app.models import ApiKey, Usage
from models_app.services.usage import MAX_SERIES, OTHER, usage_report
from tests.pages.conftest import make_snapshot


def _usage(when, **fields) -> Usage:  # type: ignore[no-untyped-def]
    row = Usage.objects.create(**fields)
    Usage.objects.filter(id=row.id).update(created_at=when)
    return row


def test_tokens_per_day_per_model_trends_and_sources(alice, bob) -> None:
    now = timezone.now()
    a = make_snapshot("org/a", owner=alice)
    b = make_snapshot("org/b", owner=alice)
    key, _ = ApiKey.issue(user=alice, name="k")
    _usage(
        now,
        user=alice,
        snapshot=a,
        source="browser",
        prompt_tokens=1,
        completion_tokens=2,
        ttft_ms=100,
        tokens_per_second=10,
    )
    _usage(
        now,
        api_key=key,
        snapshot=b,
        source="api",
        prompt_tokens=10,
        completion_tokens=20,
        ttft_ms=300,
        tokens_per_second=30,
    )
    _usage(now - timedelta(days=2), user=alice, snapshot=a, source="browser", completion_tokens=5)
    _usage(
        now - timedelta(days=30), user=alice, snapshot=a, source="browser", completion_tokens=999
    )  # too old
    _usage(now, user=bob, snapshot=a, source="browser", completion_tokens=1000)  # not hers

    report = usage_report(user=alice, days=7, now=now)
    assert len(report.days) == 7 and report.days[-1] == timezone.localdate(now)
    series = {s["name"]: s["values"] for s in report.tokens_by_model}
    assert series["org/b"][-1] == 30 and series["org/a"][-1] == 3 and series["org/a"][-3] == 5
    assert report.ttft_ms[-1] == 200 and report.tokens_per_second[-1] == 20
    assert report.totals == {"requests": 3, "prompt_tokens": 11, "completion_tokens": 27, "tokens": 38}
    assert {s["source"]: s["requests"] for s in report.by_source} == {"api": 1, "browser": 2}
    assert report.by_user == []  # only staff compare users


def test_staff_see_everyone_and_small_models_are_grouped(staff, alice) -> None:
    now = timezone.now()
    for i in range(MAX_SERIES + 2):
        snap = make_snapshot(f"org/m{i}", owner=alice)
        _usage(now, user=alice, snapshot=snap, source="browser", completion_tokens=100 - i)
    report = usage_report(user=staff, days=7, now=now)
    names = [s["name"] for s in report.tokens_by_model]
    assert len(names) == MAX_SERIES + 1 and names[-1] == OTHER
    assert report.by_user[0]["username"] == "alice"
