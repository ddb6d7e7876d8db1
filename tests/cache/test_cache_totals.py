"""cache_totals on a real cache: two repos whose weights are one entry of huggingface_hub's shared Xet store."""

from __future__ import annotations

import os

import pytest

from models_app.selectors.cache import cache_totals, repo_usage_list
from models_app.services.reconcile import reconcile_cache
from tests.cache.conftest import make_public, model_files

pytestmark = pytest.mark.django_db

WEIGHTS = 300_000


@pytest.fixture
def two_repos_sharing_weights(xet_fetch, new_repo_id) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    hub, fetch = xet_fetch
    weights = os.urandom(WEIGHTS)
    first, second = new_repo_id("xet-a"), new_repo_id("xet-b")
    hub.create_repo(first, model_files("a", weights=weights))
    hub.create_repo(second, model_files("b", weights=weights))
    fetch(first)
    fetch(second)
    reconcile_cache()  # imported from the cache: private to staff until the Hub shows them to anyone
    return first, second


def test_the_shared_store_counts_an_entry_once_and_the_snapshots_once_per_repo(
    two_repos_sharing_weights, staff
) -> None:
    root = cache_totals(user=staff, include_shared_store=True).roots[0]

    assert root.snapshots == 2
    # Each repo's size holds the weights in full: deleting either alone frees nothing of them.
    assert root.size_bytes > 2 * WEIGHTS
    # The store holds them once, and says so.
    assert root.shared_store == {"entries": 1, "bytes": WEIGHTS, "orphaned_entries": 0, "orphaned_bytes": 0}
    assert sum(r["bytes"] for r in repo_usage_list(user=staff)) == root.size_bytes


def test_a_user_counts_only_the_models_they_may_see_but_the_disk_counts_every_one(
    two_repos_sharing_weights, alice, staff
) -> None:
    first, _ = two_repos_sharing_weights
    make_public(first)

    alices = cache_totals(user=alice)
    everyone = cache_totals(user=None)

    assert alices.snapshots == 1
    assert [r["repository__repo_id"] for r in repo_usage_list(user=alice)] == [first]
    assert WEIGHTS < alices.size_bytes < everyone.size_bytes == cache_totals(user=staff).size_bytes
    assert alices.roots[0].shared_store is None  # not asked for: it lists the store on disk
