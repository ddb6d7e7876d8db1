"""Discover beyond one listing: "More results" through the Hub's cursor, the private repos of every stored token,
a repo checked on its own when the listing lacks its sizes, and the cache shared by processes (Redis)."""

from __future__ import annotations

import json
import urllib.request
from io import StringIO

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command

from models_app.models import ApiKey
from models_app.services import discover, discover_details
from models_app.services.credentials import create_credential
from models_app.services.discover import DiscoverError
from tests.api.conftest import KeyClient
from tests.discover.conftest import discover_cache_keys

pytestmark = pytest.mark.django_db


def listing_requests(hub) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.path for r in hub.requests if r.path.startswith("/api/models?") or r.path == "/api/models"]


def test_more_results_page_on_through_the_hubs_cursor(family, hub, settings) -> None:
    settings.DISCOVER_MAX_RESULTS = 2
    seen, cursor, pages = [], "", 0
    hub.clear_requests()
    while True:
        page = discover.search(family.word, mlx_only=False, sort="downloads", cursor=cursor)
        pages += 1
        seen += [r.hub.repo_id for r in page.results]
        assert page.cursor == cursor
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    # Three repos, two a page: two pages, each one listing request, every repo once, most downloads first.
    assert pages == 2 and len(listing_requests(hub)) == 2
    assert seen == [family.other, family.full, family.q4]
    # Each page of the Hub's answer is cached under its cursor: the second page again costs no request.
    hub.clear_requests()
    assert discover.search(family.word, mlx_only=False, cursor=cursor).from_cache
    assert listing_requests(hub) == []


def test_a_page_is_filled_across_the_hubs_small_pages_and_resumes_where_it_stopped(
    family, hub, settings
) -> None:
    hub.list_page_size = 1  # the Hub gives one per page, whatever limit asks
    try:
        settings.DISCOVER_MAX_RESULTS = 2
        hub.clear_requests()
        first = discover.search(family.word, mlx_only=False)
        assert len(first.results) == 2 and len(listing_requests(hub)) == 2 and first.next_cursor
        second = discover.search(family.word, mlx_only=False, cursor=first.next_cursor)
        assert [r.hub.repo_id for r in second.results] == [family.q4] and second.next_cursor == ""
    finally:
        hub.list_page_size = 1000


@pytest.mark.parametrize("cursor", ["a b", "x\nHost: evil", "x" * 1001, "http://evil/"])
def test_a_cursor_that_no_search_gave_is_refused_before_any_hub_call(hub, cursor) -> None:  # type: ignore[no-untyped-def]
    hub.clear_requests()
    with pytest.raises(DiscoverError) as caught:
        discover.search("qwen", cursor=cursor)
    assert caught.value.code == "invalid" and listing_requests(hub) == []


def test_api_and_page_offer_more_results(alice, alice_client, family, settings) -> None:
    settings.DISCOVER_MAX_RESULTS = 1
    api = KeyClient(ApiKey.issue(user=alice, name="more")[1])
    body = api.get("/api/v1/discover", {"q": family.word}).json()
    assert [r["repo_id"] for r in body["results"]] == [family.full] and body["next_cursor"]
    more = api.get("/api/v1/discover", {"q": family.word, "cursor": body["next_cursor"]}).json()
    assert [r["repo_id"] for r in more["results"]] == [family.q4] and more["next_cursor"] == ""
    assert api.get("/api/v1/discover", {"q": family.word, "cursor": "a b"}).status_code == 400
    html = alice_client.get("/discover/", {"q": family.word, "mlx": "1"}).content.decode()
    assert 'data-testid="discover-more"' in html and f"cursor={body['next_cursor']}" in html
    last = alice_client.get("/discover/", {"q": family.word, "mlx": "1", "cursor": body["next_cursor"]})
    assert family.q4 in last.content.decode() and 'data-testid="discover-more"' not in last.content.decode()


def test_private_repos_of_every_stored_token_are_merged_once_and_marked(family, hub, alice) -> None:
    from models_app.services.credentials import search_credentials

    mine, work, both = (f"mlx-test/Tiny{family.word}-{n}-4bit" for n in ("mine", "work", "both"))
    for repo_id, downloads in ((mine, 5), (work, 2000), (both, 7)):
        hub.create_repo(repo_id, {"config.json": b"{}"}, private=True, info={"downloads": downloads})
    hub.add_token(f"hf_{family.word}home", "alice", can_read=[mine, both])
    hub.add_token(f"hf_{family.word}work", "alice-at-work", can_read=[work, both])
    create_credential(owner=alice, name="home", token=f"hf_{family.word}home")  # the first: default
    create_credential(owner=alice, name="work", token=f"hf_{family.word}work")
    tokens = search_credentials(alice)
    assert [c.name for c in tokens] == ["home", "work"]
    page = discover.search(family.word, credentials=tokens)
    ids = [r.hub.repo_id for r in page.results]
    # Each repo once, in the sort's order (downloads) whichever token found it.
    assert ids == [work, family.full, family.q4, both, mine]
    assert {r.hub.repo_id for r in page.results if r.hub.private} == {mine, work, both}
    assert page.warnings == []
    # Nobody else's search shows them, nor the cache entries of alice's tokens.
    assert not {mine, work, both} & {r.hub.repo_id for r in discover.search(family.word).results}


def test_a_refused_second_token_costs_its_private_repos_not_the_search(
    family, hub, alice, alice_client
) -> None:
    from models_app.services.credentials import search_credentials

    secret = f"mlx-test/Tiny{family.word}-secret-8bit"
    hub.create_repo(secret, {"config.json": b"{}"}, private=True)
    hub.add_token(f"hf_{family.word}good", "alice", can_read=[secret])
    create_credential(owner=alice, name="good", token=f"hf_{family.word}good")
    create_credential(owner=alice, name="revoked", token=f"hf_{family.word}gone")  # the Hub never knew it
    page = discover.search(family.word, credentials=search_credentials(alice))
    assert secret in [r.hub.repo_id for r in page.results]
    [warning] = page.warnings
    assert "“revoked”" in warning and f"hf_{family.word}gone" not in warning
    # The page and the API say it too (the cached answers, the same warning).
    html = alice_client.get("/discover/", {"q": family.word, "mlx": "1"}).content.decode()
    assert 'data-testid="discover-warning"' in html and "revoked" in html and secret in html
    assert f"hf_{family.word}gone" not in html
    body = (
        KeyClient(ApiKey.issue(user=alice, name="warn")[1]).get("/api/v1/discover", {"q": family.word}).json()
    )
    assert body["warnings"] == [warning] and secret in [r["repo_id"] for r in body["results"]]


def test_a_repo_the_listing_leaves_without_sizes_is_checked_on_its_own(
    family, hub, alice, tiny_model_path
) -> None:
    from devkit.tinymodel import tiny_model_dir, tiny_model_files

    quiet = f"mlx-test/Tiny{family.word}-quiet-4bit"
    files = tiny_model_files(tiny_model_dir(tiny_model_path.parent, quantize=True))
    # The listing says nothing of its weights (as for a repo the Hub has no safetensors counts for).
    hub.create_repo(quiet, files, info={"safetensors": None, "downloads": 1})
    listed = {r.hub.repo_id: r for r in discover.search(family.word).results}
    assert listed[quiet].hub.weights_bytes is None and listed[quiet].verdict == "amber"
    hub.clear_requests()
    checked = discover_details.details(quiet, user=alice)
    # From the .safetensors headers (Range requests): the same bytes the listing gives its 4-bit twin.
    assert checked.hub.weights_bytes == listed[family.q4].hub.weights_bytes
    assert checked.hub.parameters == listed[family.q4].hub.parameters
    assert checked.verdict == "green" and checked.hub.quantization == "4-bit"
    assert any(r.headers.get("Range") for r in hub.requests if "/resolve/" in r.path)
    # Cached: asked again, the Hub is left alone.
    hub.clear_requests()
    assert discover_details.details(quiet).hub.weights_bytes == checked.hub.weights_bytes
    assert hub.requests == []


def test_details_api_cli_and_errors(alice, family, hub) -> None:
    quiet = f"mlx-test/Tiny{family.word}-quiet-bf16"
    hub.create_repo(
        quiet, {"config.json": b"{}", "model.safetensors": safetensors_of(250)}, info={"safetensors": None}
    )
    api = KeyClient(ApiKey.issue(user=alice, name="details")[1])
    listing = api.get("/api/v1/discover", {"q": family.word}).json()
    row = next(r for r in listing["results"] if r["repo_id"] == quiet)
    assert row["details_pending"] and row["weights_bytes"] is None
    assert not next(r for r in listing["results"] if r["repo_id"] == family.q4)["details_pending"]
    body = api.get(row["details_url"]).json()
    assert body["repo_id"] == quiet and body["weights_bytes"] == 1000 and body["verdict"] == "green"
    assert api.get("/api/v1/discover/details", {"repo_id": "nobody/nothing"}).status_code == 404
    assert api.get("/api/v1/discover/details", {"repo_id": "../x"}).status_code == 400
    # The CLI answers all at once: it checks what the listing left out before printing.
    out = StringIO()
    call_command("search", family.word, "--json", stdout=out)
    assert {r["repo_id"]: r["weights_bytes"] for r in json.loads(out.getvalue())}[quiet] == 1000


def safetensors_of(n: int) -> bytes:
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, n * 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * (n * 4)


def test_the_cache_lives_in_redis_with_the_configured_ttl(family, settings) -> None:
    settings.DISCOVER_CACHE_TTL = 321
    assert settings.CACHES["default"]["BACKEND"].endswith("RedisCache")
    discover.search(family.word)
    [key] = discover_cache_keys()
    ttl = cache._cache.get_client(write=False).ttl(key)  # type: ignore[attr-defined]
    assert 0 < ttl <= 321


@pytest.mark.django_db(transaction=True)
def test_a_search_in_one_process_is_answered_from_the_cache_in_another(
    family, hub, alice, asgi_server
) -> None:
    """The CLI (this process) searches; the web server (uvicorn, another process) answers the same search from
    the shared cache without asking the Hub."""
    key = ApiKey.issue(user=alice, name="shared-cache")[1]
    out = StringIO()
    call_command("search", family.word, "--user", alice.username, stdout=out)
    assert family.q4 in out.getvalue()
    hub.clear_requests()
    request = urllib.request.Request(
        f"{asgi_server.url}/api/v1/discover?q={family.word}", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.load(response)
    assert body["from_cache"] is True and len(body["results"]) == 2
    assert listing_requests(hub) == []
    assert hub.url == settings.HF_ENDPOINT


def test_a_cache_that_is_down_is_a_miss_never_an_error(family, hub, settings) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens on the discard port
            "KEY_PREFIX": "down",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    hub.clear_requests()
    for _ in range(2):  # nothing kept: each search asks the Hub, and answers
        page = discover.search(family.word)
        assert not page.from_cache and [r.hub.repo_id for r in page.results] == [family.full, family.q4]
    assert len(listing_requests(hub)) == 2
