"""Discover's edges against the local Hub: the page (variants side by side, verdicts, a link that opens the pull
plan), `GET /api/v1/discover`, `manage.py search`, and a Hub outage on each (never a 500)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from models_app.models import ApiKey
from tests.api.conftest import KeyClient
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_key(alice) -> str:  # type: ignore[no-untyped-def]
    return ApiKey.issue(user=alice, name="alice-discover")[1]


@pytest.fixture(autouse=True)
def _short_outages(settings) -> None:  # type: ignore[no-untyped-def]
    settings.DISCOVER_TIMEOUT = 3  # huggingface_hub retries a 500 with backoff: the deadline ends it


def test_page_shows_variants_side_by_side_with_verdicts_and_plan_links(alice_client, family) -> None:
    make_snapshot(family.q4)
    response = alice_client.get("/discover/", {"q": family.word, "mlx": "1", "sort": "downloads"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('data-testid="discover-group"') == 1  # one family: both conversions in it
    q4_at, full_at = html.index(f'data-repo="{family.q4}"'), html.index(f'data-repo="{family.full}"')
    assert q4_at < full_at  # smallest first
    assert family.other not in html  # not MLX
    assert "4-bit" in html and "bf16" in html and 'data-verdict="green"' in html
    assert html[q4_at:full_at].count('data-testid="here"') == 1
    link = f"/pull/?repo={family.q4.replace('/', '%2F')}&amp;preview=1"
    assert link in html
    # The link opens the pull plan of that repo at once.
    plan = alice_client.get(link.replace("&amp;", "&"))
    assert plan.status_code == 200 and 'data-testid="plan"' in plan.content.decode()
    assert family.q4 in plan.content.decode()


def test_page_without_mlx_filter_includes_other_libraries(alice_client, family) -> None:
    html = alice_client.get("/discover/", {"q": family.word}).content.decode()
    assert family.other in html


def test_page_says_search_unavailable_when_the_hub_is_down(alice_client, family, hub) -> None:
    hub.faults.fail_500(times=None, path="/api/models")
    response = alice_client.get("/discover/", {"q": family.word, "mlx": "1"})
    assert response.status_code == 503
    html = response.content.decode()
    assert "Search is unavailable" in html and 'data-testid="discover-form"' in html


def test_api_returns_results_groups_and_plan_urls(alice_key, family, hub) -> None:
    api = KeyClient(alice_key)
    response = api.get("/api/v1/discover", {"q": family.word, "sort": "downloads"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert [r["repo_id"] for r in body["results"]] == [family.full, family.q4]
    q4 = next(r for r in body["results"] if r["repo_id"] == family.q4)
    assert q4["quantization"] == "4-bit" and q4["verdict"] == "green" and q4["weights_bytes"] > 0
    assert q4["pull_url"] == f"/pull/?repo={family.q4.replace('/', '%2F')}&preview=1"
    assert body["groups"] == [{"base_model": family.base, "repo_ids": [family.q4, family.full]}]
    hub.clear_requests()
    assert api.get("/api/v1/discover", {"q": family.word}).json()["from_cache"] is True
    assert not [r for r in hub.requests if r.path.startswith("/api/models")]


@pytest.mark.parametrize(
    ("params", "code"),
    [({"q": "x" * 201}, "invalid"), ({"q": "x", "sort": "best"}, "invalid"), ({"author": "a b"}, "invalid")],
)
def test_api_refuses_bad_input(alice_key, hub, params, code) -> None:  # type: ignore[no-untyped-def]
    response = KeyClient(alice_key).get("/api/v1/discover", params)
    assert response.status_code == 400 and response.json()["error"]["code"] == code


def test_api_outage_is_503_unavailable(alice_key, family, hub) -> None:
    hub.faults.fail_500(times=None, path="/api/models")
    response = KeyClient(alice_key).get("/api/v1/discover", {"q": family.word})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


def test_api_needs_authentication(client, hub) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/v1/discover", {"q": "x"}).status_code in (401, 403)


def test_cli_search_table_and_json(family) -> None:
    out = StringIO()
    call_command("search", family.word, stdout=out)
    text = out.getvalue()
    assert family.q4 in text and family.full in text and family.other not in text
    assert "4-bit" in text and "green" in text
    out = StringIO()
    call_command("search", family.word, "--json", "--all", stdout=out)
    data = json.loads(out.getvalue())
    assert {r["repo_id"] for r in data} == {family.q4, family.full, family.other}


def test_cli_outage_is_an_error_not_a_traceback(family, hub) -> None:
    hub.faults.fail_500(times=None, path="/api/models")
    with pytest.raises(CommandError, match="unavailable: Search is unavailable"):
        call_command("search", family.word)
