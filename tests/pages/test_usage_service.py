"""usage_report: the figures behind the Usage charts."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from models_app.models import ApiKey, Usage
from models_app.services.usage import MAX_SERIES, OTHER, usage_report
from tests.factories import make_snapshot


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


def test_staff_can_narrow_the_report_to_one_user_and_others_only_to_themselves(staff, alice, bob) -> None:  # type: ignore[no-untyped-def]
    now = timezone.now()
    snap = make_snapshot("org/shared", owner=alice)
    key, _ = ApiKey.issue(user=bob, name="bob's script")
    _usage(now, user=alice, snapshot=snap, source="browser", completion_tokens=7)
    _usage(now, api_key=key, snapshot=snap, source="api", completion_tokens=40)  # bob's, through his key
    _usage(now, user=bob, snapshot=snap, source="browser", completion_tokens=2)

    only_bob = usage_report(user=staff, days=7, of_user=bob, now=now)
    assert only_bob.totals["completion_tokens"] == 42
    assert {s["source"] for s in only_bob.by_source} == {"api", "browser"}
    assert usage_report(user=staff, days=7, of_user=alice, now=now).totals["completion_tokens"] == 7
    # Not staff: naming someone else narrows your own usage to nothing, never widens it.
    assert usage_report(user=alice, days=7, of_user=bob, now=now).totals["requests"] == 0


def test_days_follow_local_midnight_and_a_clock_ahead_is_left_out(settings, alice) -> None:  # type: ignore[no-untyped-def]
    """The day buckets are the current time zone's midnights (here UTC-5): 23:30 local on the 10th is the
    10th, though it is already the 11th in UTC; a row stamped tomorrow is in no day."""
    import datetime as dt
    import zoneinfo

    settings.TIME_ZONE = "America/Bogota"
    tz = zoneinfo.ZoneInfo("America/Bogota")
    now = dt.datetime(2026, 3, 12, 12, 0, tzinfo=tz)
    snap = make_snapshot("org/tz", owner=alice)
    for when, tokens in (
        (dt.datetime(2026, 3, 10, 23, 30, tzinfo=tz), 1),
        (dt.datetime(2026, 3, 11, 0, 30, tzinfo=tz), 2),
        (dt.datetime(2026, 3, 13, 9, 0, tzinfo=tz), 4),  # tomorrow
    ):
        _usage(when, user=alice, snapshot=snap, source="browser", completion_tokens=tokens)

    report = usage_report(user=alice, days=3, now=now)
    assert report.days == [dt.date(2026, 3, 10), dt.date(2026, 3, 11), dt.date(2026, 3, 12)]
    assert report.tokens_by_model == [{"name": "org/tz", "values": [1, 2, 0]}]
    assert report.requests == [1, 1, 0]
