"""Discover's service against the local Hub with the real huggingface_hub client: filters, sizes from the
listing, variants grouped, already-here, verdicts, caching, pagination and a Hub outage."""

from __future__ import annotations

import pytest

from models_app.models import Repository
from models_app.services import discover
from models_app.services.discover import DiscoverError
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db


def listing_requests(hub) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.path for r in hub.requests if r.path.startswith("/api/models?") or r.path == "/api/models"]


def test_search_finds_mlx_conversions_with_sizes_quantization_and_grouped_variants(family) -> None:
    page = discover.search(family.word, sort="downloads")
    ids = [r.hub.repo_id for r in page.results]
    # library=mlx: the PyTorch repo is left out; sorted by downloads, most first.
    assert ids == [family.full, family.q4]
    by_id = {r.hub.repo_id: r.hub for r in page.results}
    q4, full = by_id[family.q4], by_id[family.full]
    assert q4.quantization == "4-bit" and full.quantization == "bf16"
    assert q4.base_model == family.base and (q4.downloads, q4.likes) == (50, 3)
    # Sizes come from the listing's safetensors counts, exact to the byte against the repo's files.
    for repo_id, hub_model in by_id.items():
        files = family_hub_sizes(repo_id)
        assert hub_model.weights_bytes is not None
        assert abs(hub_model.weights_bytes - files) < 1024 * 64  # the safetensors header is not weights
        assert hub_model.parameters and hub_model.parameters > 0
    assert q4.weights_bytes < full.weights_bytes
    # Both conversions of one base model: one group, smallest first.
    [group] = page.groups
    assert [r.hub.repo_id for r in group.results] == [family.q4, family.full]
    assert all(r.verdict == "green" and not r.here for r in page.results)


def family_hub_sizes(repo_id: str) -> int:
    from django.conf import settings
    from huggingface_hub import HfApi

    info = HfApi(endpoint=settings.HF_ENDPOINT).model_info(repo_id, files_metadata=True, token=False)
    return sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors"))


def test_second_search_is_served_from_the_cache_without_a_hub_request(family, hub) -> None:
    first = discover.search(family.word)
    hub.clear_requests()
    second = discover.search(family.word)
    assert not first.from_cache and second.from_cache
    assert [r.hub.repo_id for r in second.results] == [r.hub.repo_id for r in first.results]
    assert listing_requests(hub) == []
    # Another sort is another question for the Hub.
    discover.search(family.word, sort="recent")
    assert len(listing_requests(hub)) == 1


def test_sort_and_author_reach_the_hub(family, hub) -> None:
    hub.clear_requests()
    page = discover.search(family.word, sort="trending", author="mlx-test")
    [request] = listing_requests(hub)
    assert "sort=trendingScore" in request and "author=mlx-test" in request and "filter=mlx" in request
    assert [r.hub.repo_id for r in page.results] == [family.full, family.q4]


def test_pages_of_the_listing_are_followed_through_the_link_header(family, hub, settings) -> None:
    hub.list_page_size = 1
    try:
        hub.clear_requests()
        page = discover.search(family.word, mlx_only=False)
        assert {r.hub.repo_id for r in page.results} == {family.q4, family.full, family.other}
        assert len(listing_requests(hub)) == 3
        # DISCOVER_MAX_RESULTS bounds the results and so the pages asked for.
        settings.DISCOVER_MAX_RESULTS = 1
        hub.clear_requests()
        page = discover.search(family.word, sort="likes", mlx_only=False)
        assert len(page.results) == 1 and len(listing_requests(hub)) == 1
    finally:
        hub.list_page_size = 1000


def test_already_here_and_update_available_come_from_the_cache_index(family) -> None:
    make_snapshot(family.q4)
    Repository.objects.filter(repo_id=family.q4).update(update_available=True)
    make_snapshot(family.full, status="partial")
    by_id = {r.hub.repo_id: r for r in discover.search(family.word).results}
    assert by_id[family.q4].here and by_id[family.q4].update_available
    assert not by_id[family.full].here  # a partial snapshot is not a model here


def test_verdicts_follow_memory_and_disk(family, settings) -> None:
    settings.INFERENCE_MEMORY_BUDGET = 1  # every model is over the budget, none over the machine
    assert {r.verdict for r in discover.search(family.word).results} == {"amber"}
    settings.DOWNLOAD_DISK_RESERVE = 10**18  # no disk could keep this much free
    results = discover.search(family.word).results
    assert {r.verdict for r in results} == {"red"} and "disk" in results[0].reason


def test_private_repos_are_found_with_the_users_token_only(family, hub, alice) -> None:
    from models_app.services.credentials import create_credential

    secret = f"mlx-test/Tiny{family.word}-private-8bit"
    hub.create_repo(secret, {"config.json": b"{}"}, private=True)
    token = f"hf_{family.word}secret"
    hub.add_token(token, "alice")
    credential = create_credential(owner=alice, name="mine", token=token)
    assert secret not in [r.hub.repo_id for r in discover.search(family.word).results]
    mine = discover.search(family.word, credentials=[credential])
    assert secret in [r.hub.repo_id for r in mine.results] and not mine.from_cache
    assert any(r.headers.get("Authorization") == f"Bearer {token}" for r in hub.requests)


def test_hub_outage_is_search_unavailable_then_answered_at_once_until_the_backoff_ends(
    family, hub, settings
) -> None:
    from django.core.cache import cache

    settings.DISCOVER_TIMEOUT = 3  # huggingface_hub retries a 500 with backoff: the deadline ends it
    hub.faults.fail_500(times=None, path="/api/models")
    with pytest.raises(DiscoverError) as caught:
        discover.search(family.word)
    assert caught.value.code == "unavailable" and "Search is unavailable" in caught.value.message
    assert listing_requests(hub)
    # Within the backoff the Hub is left alone: the next search is refused at once, without a request.
    hub.faults.clear()
    hub.clear_requests()
    with pytest.raises(DiscoverError):
        discover.search(family.word, sort="recent")
    assert listing_requests(hub) == []
    # Backoff over (its cache entry expired): the Hub is asked again, and the failure was not cached as results.
    cache.delete(discover._outage_key())
    assert len(discover.search(family.word).results) == 2


def test_hub_unreachable_is_search_unavailable(family, settings) -> None:
    settings.DISCOVER_TIMEOUT = 3
    settings.HF_ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(DiscoverError) as caught:
        discover.search(family.word)
    assert caught.value.code == "unavailable"


@pytest.mark.parametrize(
    ("query", "kwargs"),
    [("x" * 201, {}), ("qwen", {"sort": "best"}), ("qwen", {"author": "a b"})],
)
def test_bad_input_is_refused_before_any_hub_call(hub, query, kwargs) -> None:  # type: ignore[no-untyped-def]
    hub.clear_requests()
    with pytest.raises(DiscoverError) as caught:
        discover.search(query, **kwargs)
    assert caught.value.code == "invalid" and listing_requests(hub) == []


def test_an_empty_query_lists_the_top_mlx_models(family, hub) -> None:
    hub.clear_requests()
    page = discover.search("  ", author="mlx-test", sort="downloads")
    [request] = listing_requests(hub)
    assert "search=" not in request
    # Other tests' repos share this author on the session's Hub: this family's are among them, in order,
    # though with enough of the others they are on a later page.
    results = list(page.results)
    while page.next_cursor and sum(family.word in r.hub.repo_id for r in results) < 2:
        page = discover.search("  ", author="mlx-test", sort="downloads", cursor=page.next_cursor)
        results += page.results
    ours = [r.hub.repo_id for r in results if family.word in r.hub.repo_id]
    assert ours == [family.full, family.q4]
    assert all(r.hub.author == "mlx-test" for r in results)


def test_mlx_community_variants_sit_side_by_side_whatever_names_their_base(hub) -> None:
    """4/6/8-bit, DWQ and bf16 conversions named the mlx-community way: one declares its base in its card, one
    by tag, the rest only by name; all land in one family, each with its quantization."""
    import json
    import struct
    import uuid

    word = f"fam{uuid.uuid4().hex[:8]}"

    def weights(dtype: str, n: int) -> bytes:
        header = json.dumps({"w": {"dtype": dtype, "shape": [n], "data_offsets": [0, n * 4]}}).encode()
        return struct.pack("<Q", len(header)) + header + b"\0" * (n * 4)

    def config(bits: int | None) -> bytes:
        quant = {"quantization": {"bits": bits, "group_size": 64}} if bits else {}
        return json.dumps({"model_type": "qwen2", **quant}).encode()

    base = f"Qwen/Qwen3-{word}-8B"
    repos = {
        f"mlx-community/Qwen3-{word}-8B-4bit": ({"cardData": {"base_model": base}}, 4, "U32", 100),
        f"mlx-community/Qwen3-{word}-8B-6bit": (
            {"tags": ["mlx", f"base_model:quantized:{base}"]},
            6,
            "U32",
            150,
        ),
        f"mlx-community/Qwen3-{word}-8B-8bit": ({}, 8, "U32", 200),
        f"mlx-community/Qwen3-{word}-8B-4bit-DWQ": ({}, 4, "U32", 101),
        f"mlx-community/Qwen3-{word}-8B-bf16": ({}, None, "BF16", 800),
    }
    for repo_id, (info, bits, dtype, n) in repos.items():
        hub.create_repo(
            repo_id, {"config.json": config(bits), "model.safetensors": weights(dtype, n)}, info=info
        )
    page = discover.search(word, author="mlx-community")
    [group] = page.groups
    assert group.base_model == base
    quant = {r.hub.repo_id.rsplit("-8B-", 1)[1]: r.hub.quantization for r in group.results}
    assert quant == {
        "4bit": "4-bit",
        "6bit": "6-bit",
        "8bit": "8-bit",
        "4bit-DWQ": "4-bit DWQ",
        "bf16": "bf16",
    }
    # Smallest first: the choice of a quantization is one glance down the list.
    sizes = [r.hub.weights_bytes for r in group.results]
    assert sizes == sorted(sizes) and sizes[0] == 400 and sizes[-1] == 1600
    assert group.results[0].hub.parameters == 100 * 8  # 4-bit: eight values per U32


def test_a_refused_token_is_that_users_problem_not_an_outage(family, hub, alice) -> None:
    from models_app.services.credentials import create_credential

    revoked = create_credential(
        owner=alice, name="old", token=f"hf_{family.word}revoked"
    )  # the Hub never knew it
    with pytest.raises(DiscoverError) as caught:
        discover.search(family.word, credentials=[revoked])
    assert caught.value.code == "invalid_credential" and "Settings" in caught.value.message
    assert f"hf_{family.word}revoked" not in caught.value.message
    # Everyone else still searches: no backoff was set for the Hub.
    assert len(discover.search(family.word).results) == 2
