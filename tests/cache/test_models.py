"""has_model / get_model_path / model_list / cache_root_path: lookups on the index, paths from the layout."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
import pytest

from devkit.tinymodel import tiny_model_files
from models_app.models import Repository, Snapshot
from models_app.selectors.snapshots import model_list
from models_app.services.cache import (
    AmbiguousRevision,
    ModelNotFound,
    UnknownCacheRoot,
    cache_root_path,
    get_model_path,
    has_model,
)
from models_app.services.reconcile import reconcile_cache
from tests.cache.conftest import age, make_public, model_files, snapshot_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_revisions(hub, fetch, new_repo_id) -> tuple[str, str, str]:
    repo_id = new_repo_id()
    old = hub.create_repo(repo_id, model_files("a"))
    fetch(repo_id)
    reconcile_cache()
    new = hub.commit(repo_id, {"config.json": b'{"model_type": "llama", "v": 2}'})
    fetch(repo_id)
    reconcile_cache()
    make_public(repo_id)
    age(snapshot_of(repo_id, old), downloaded_days=2)
    age(snapshot_of(repo_id, new), downloaded_days=1)
    return repo_id, old, new


def test_get_model_path_returns_a_path_mlx_lm_loads(hub, fetch, new_repo_id, tiny_model_path) -> None:
    repo_id = new_repo_id("tiny")
    sha = hub.create_repo(repo_id, tiny_model_files(tiny_model_path))
    fetch(repo_id)
    reconcile_cache()

    path = get_model_path(repo_id)

    assert path == Path(snapshot_of(repo_id, sha).path)
    assert path.name == sha and path.parent.name == "snapshots"
    _model, tokenizer = mlx_lm.load(str(path))
    assert tokenizer.encode("hello")


def test_the_newest_ready_snapshot_is_the_default(two_revisions, cache_root) -> None:
    repo_id, old, new = two_revisions
    folder = cache_root / f"models--{repo_id.replace('/', '--')}" / "snapshots"

    assert get_model_path(repo_id) == folder / new
    assert get_model_path(repo_id, "main") == folder / new
    assert get_model_path(repo_id, old) == folder / old
    assert get_model_path(repo_id, old[:7]) == folder / old
    assert has_model(repo_id) and has_model(repo_id, old[:10])


def test_a_snapshot_that_is_not_ready_is_not_served(two_revisions) -> None:
    repo_id, old, new = two_revisions
    Snapshot.objects.filter(commit_sha=new).update(status=Snapshot.Status.INVALID)

    assert get_model_path(repo_id).name == old  # the newest *ready* one
    with pytest.raises(ModelNotFound, match="not ready"):
        get_model_path(repo_id, new)
    assert not has_model(repo_id, new)


def test_unknown_models_and_revisions_raise_a_clear_error(two_revisions) -> None:
    repo_id, _, _ = two_revisions
    with pytest.raises(ModelNotFound, match="not downloaded"):
        get_model_path("nobody/nothing")
    with pytest.raises(ModelNotFound) as info:
        get_model_path(repo_id, "v9.9")
    assert info.value.code == "model_not_found" and "pull" in info.value.action
    assert not has_model("nobody/nothing")


def test_an_ambiguous_sha_prefix_is_refused(two_revisions) -> None:
    repo_id, old, new = two_revisions
    Snapshot.objects.filter(commit_sha=old).update(commit_sha="abcdef1" + "0" * 33)
    Snapshot.objects.filter(commit_sha=new).update(commit_sha="abcdef1" + "1" * 33)

    with pytest.raises(AmbiguousRevision):
        get_model_path(repo_id, "abcdef1")


def test_private_models_are_only_found_for_their_owner_and_staff(two_revisions, alice, bob, staff) -> None:
    repo_id, _, _ = two_revisions
    Repository.objects.filter(repo_id=repo_id).update(private=True, owner=alice)

    assert has_model(repo_id, user=alice)
    assert has_model(repo_id, user=staff)
    assert not has_model(repo_id, user=bob)
    with pytest.raises(ModelNotFound):
        get_model_path(repo_id, user=bob)
    assert [m.repo_id for m in model_list(user=bob)] == []
    assert len(model_list(user=alice)) == 2


def test_model_list_describes_every_snapshot(two_revisions) -> None:
    repo_id, old, new = two_revisions
    Repository.objects.filter(repo_id=repo_id).update(update_available=True, remote_sha="f" * 40)

    models = model_list(user=None)

    assert [(m.repo_id, m.commit_sha) for m in models] == [(repo_id, new), (repo_id, old)]
    first = models[0]
    assert first.status == "ready" and first.ref == "main" and first.kind == "hub"
    assert first.size_bytes > 5000 and first.path.endswith(new)
    assert first.update_available and first.remote_sha == "f" * 40
    assert first.as_json()["downloaded_at"]


def test_model_list_takes_one_query_whatever_the_number_of_models(
    django_assert_num_queries, hub, fetch, new_repo_id
) -> None:
    for _ in range(4):
        repo_id = new_repo_id()
        hub.create_repo(repo_id, model_files(repo_id))
        fetch(repo_id)
    reconcile_cache()

    with django_assert_num_queries(1):
        assert len(model_list(user=None)) == 4


def test_cache_roots_are_chosen_by_name_only(settings, tmp_path) -> None:
    settings.CACHE_ROOTS = {"default": tmp_path / "a", "external": tmp_path / "b"}

    assert cache_root_path("external") == tmp_path / "b"
    with pytest.raises(UnknownCacheRoot, match="Unknown cache root") as info:
        cache_root_path("/etc")
    assert "default, external" in info.value.action
