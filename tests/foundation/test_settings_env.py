from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from dashboard.env import (
    env_bool,
    env_duration,
    env_int,
    env_named_paths,
    env_size,
    parse_duration,
    parse_size,
)


def test_it_reads_booleans_and_rejects_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAG", "yes")
    assert env_bool("FLAG", False) is True
    monkeypatch.setenv("FLAG", "0")
    assert env_bool("FLAG", True) is False
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="FLAG='maybe' is not a boolean"):
        env_bool("FLAG", False)


def test_it_reads_integers_with_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("N", "5")
    assert env_int("N", 1, minimum=1) == 5
    monkeypatch.setenv("N", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("N", 1, minimum=1)
    monkeypatch.setenv("N", "five")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("N", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024),
        ("50GB", 50 * 10**9),
        ("1.5GiB", int(1.5 * 2**30)),
        ("200 MB", 200 * 10**6),
        ("3k", 3000),
    ],
)
def test_it_parses_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45", 45)]
)
def test_it_parses_durations(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "10 parsecs", "-5GB", "1e9"])
def test_it_rejects_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_env_size_and_duration_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESERVE", "lots")
    with pytest.raises(ImproperlyConfigured, match="RESERVE"):
        env_size("RESERVE", 0)
    monkeypatch.setenv("AGE", "soon")
    with pytest.raises(ImproperlyConfigured, match="AGE"):
        env_duration("AGE", 0)


def test_it_reads_named_roots(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ROOTS", f"external={tmp_path}/a, scratch={tmp_path}/b")
    roots = env_named_paths("ROOTS")
    assert roots == {"external": tmp_path / "a", "scratch": tmp_path / "b"}
    monkeypatch.setenv("ROOTS", "relative=some/dir")
    with pytest.raises(ImproperlyConfigured, match="absolute"):
        env_named_paths("ROOTS")
    monkeypatch.setenv("ROOTS", "/no/name")
    with pytest.raises(ImproperlyConfigured, match="NAME=/absolute/path"):
        env_named_paths("ROOTS")
