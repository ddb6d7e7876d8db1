"""Every error code the product raises is in the one table (`models_app/services/errors.py`), with everything
the pages, the API and the CLI derive from it: adding a code in one place and forgetting the table fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.test import override_settings

from dashboard.forms import PullForm, error_action
from models_app.services import errors
from models_app.services.errors import ALL_CODES, CODES, DownloadError

ROOT = Path(__file__).resolve().parents[2]
# The OpenAI-compatible API answers in OpenAI's own error vocabulary (models_app/openai/views.py).
OWN_VOCABULARY = {ROOT / "models_app" / "openai"}
ERROR_CLASSES = {"ApiError", "DiscoverError", "DownloadError"}


def _raised_codes() -> set[tuple[str, str]]:
    """(code, where) for every `code = "..."` on a class and every literal code given to an error class."""
    found: set[tuple[str, str]] = set()
    for package in ("models_app", "dashboard", "tasks"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts or any(d in path.parents for d in OWN_VOCABULARY):
                continue
            where = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    for stmt in node.body:
                        if (
                            isinstance(stmt, ast.Assign)
                            and [getattr(t, "id", None) for t in stmt.targets] == ["code"]
                            and isinstance(stmt.value, ast.Constant)
                        ):
                            found.add((stmt.value.value, f"{where}:{node.name}"))
                if (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) in ERROR_CLASSES
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    found.add((node.args[0].value, f"{where}:{node.lineno}"))
    return found


def test_the_walk_finds_the_codes_it_is_meant_to_check() -> None:
    codes = {code for code, _ in _raised_codes()}
    # one class attribute (cache.py), one ApiError literal (views), one DiscoverError literal (discover.py)
    assert {"in_use", "invalid_id", "unavailable"} <= codes


def test_every_raised_code_is_in_the_table() -> None:
    missing = sorted(f"{code} ({where})" for code, where in _raised_codes() if code not in ALL_CODES)
    assert missing == []


@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_every_code_has_an_http_status(code: str) -> None:
    assert 400 <= ALL_CODES[code].http_status <= 599
    assert errors.http_status(code) == ALL_CODES[code].http_status


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_download_code_has_an_action_a_place_on_the_form_and_a_working_link(code: str) -> None:
    spec = CODES[code]
    error = DownloadError(code, "message", repo_id="org/name")
    assert error.action and "{" not in error.action
    assert spec.field == "" or spec.field in PullForm.base_fields
    assert bool(spec.link) == bool(spec.link_text)
    action = error_action(error, "org/name")
    assert action.text == error.action
    if spec.link:
        assert action.url and action.link == spec.link_text
    else:
        assert (action.url, action.link) == ("", "")


@override_settings(HF_ENDPOINT="https://hub.example")
def test_links_are_derived_from_the_table() -> None:
    assert errors.link_for(errors.GATED, "org/name") == (
        "https://hub.example/org/name",
        "Accept the licence on the Hub",
    )
    assert errors.link_for(errors.GATED) == ("", "")  # no repo id, no licence page to send the user to
    assert errors.link_for(errors.AUTH_REQUIRED)[0].endswith("#credentials")
    assert errors.link_for(errors.NETWORK) == ("", "")


def test_a_code_outside_the_table_cannot_be_raised() -> None:
    with pytest.raises(ValueError):
        DownloadError("no_such_code", "message")
