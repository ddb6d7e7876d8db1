"""check_updates: a new commit on the tracked ref, what it changes, and the bytes a pull would fetch."""

from __future__ import annotations

import json

import pytest

from models_app.models import DownloadJob, Repository, Snapshot
from models_app.services import credentials
from models_app.services.reconcile import reconcile_cache
from models_app.services.updates import check_updates
from tests.cache.conftest import model_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def pulled(hub, fetch, new_repo_id):  # type: ignore[no-untyped-def]
    """A repo downloaded at main and indexed; returns its id."""

    def pulled(files: dict[str, bytes] | None = None, **kwargs) -> str:  # type: ignore[no-untyped-def]
        repo_id = new_repo_id()
        hub.create_repo(repo_id, files or model_files("a"), **kwargs)
        return repo_id

    return pulled


def _index(repo_id: str, fetch) -> None:  # type: ignore[no-untyped-def]
    fetch(repo_id)
    reconcile_cache()


def _check(repo_id: str):  # type: ignore[no-untyped-def]
    [info] = check_updates(repo_ids=[repo_id])
    assert info.error == "", info.error
    return info


def test_an_unchanged_repo_has_no_update_and_becomes_public(hub, fetch, pulled) -> None:
    repo_id = pulled()
    _index(repo_id, fetch)
    assert Repository.objects.get(repo_id=repo_id).private  # imported: private until the Hub says

    info = _check(repo_id)

    assert not info.update_available and info.changes == []
    assert info.remote_sha == info.local_sha == hub.head_sha(repo_id)
    repo = Repository.objects.get(repo_id=repo_id)
    assert repo.remote_sha == hub.head_sha(repo_id) and repo.remote_checked_at is not None
    assert not repo.update_available and repo.update_summary == {}
    assert repo.private is False and repo.gated is False


def test_new_weights_are_described_with_the_bytes_to_fetch(hub, fetch, pulled) -> None:
    repo_id = pulled()
    _index(repo_id, fetch)
    new_sha = hub.commit(repo_id, {"model.safetensors": b"w" * 7000})

    info = _check(repo_id)

    assert info.update_available and info.remote_sha == new_sha
    assert info.categories == ["weights"]
    assert [(c.path, c.change, c.size, c.cached) for c in info.changes] == [
        ("model.safetensors", "modified", 7000, False)
    ]
    assert info.bytes_to_fetch == 7000
    repo = Repository.objects.get(repo_id=repo_id)
    assert repo.update_available and repo.remote_sha == new_sha
    assert repo.update_summary["categories"] == ["weights"]
    assert repo.update_summary["changed"] == {"weights": ["model.safetensors"]}
    assert repo.update_summary["bytes_to_fetch"] == 7000
    assert repo.update_summary["local_sha"] == info.local_sha


def test_config_tokenizer_and_chat_template_changes_are_told_apart(hub, fetch, pulled) -> None:
    repo_id = pulled()
    _index(repo_id, fetch)
    config = b'{"model_type": "llama", "rope_theta": 1}'
    tokenizer = b'{"version": "1.1", "model": {}}'
    template = b"{% for m in messages %}{{ m.content }}{% endfor %}"
    hub.commit(repo_id, {"config.json": config, "tokenizer.json": tokenizer, "chat_template.jinja": template})

    info = _check(repo_id)

    assert info.categories == ["chat_template", "config", "tokenizer"]
    changes = {c.path: (c.change, c.categories) for c in info.changes}
    assert changes == {
        "chat_template.jinja": ("added", ("chat_template",)),
        "config.json": ("modified", ("config",)),
        "tokenizer.json": ("modified", ("tokenizer",)),
    }
    assert info.bytes_to_fetch == len(config) + len(tokenizer) + len(template)


def test_a_chat_template_fix_in_tokenizer_config_is_a_chat_template_change(hub, fetch, pulled) -> None:
    repo_id = pulled()
    _index(repo_id, fetch)
    hub.commit(
        repo_id,
        {"tokenizer_config.json": json.dumps({"chat_template": "{{ fixed }}", "eos_token": "</s>"}).encode()},
    )

    info = _check(repo_id)

    assert info.categories == ["chat_template"]
    assert info.changes[0].path == "tokenizer_config.json"


def test_other_tokenizer_config_changes_are_tokenizer_changes(hub, fetch, pulled) -> None:
    repo_id = pulled()
    _index(repo_id, fetch)
    hub.commit(
        repo_id,
        {
            "tokenizer_config.json": json.dumps(
                {"chat_template": "{{ messages }}", "eos_token": "<eos>"}
            ).encode()
        },
    )

    assert _check(repo_id).categories == ["tokenizer"]


def test_blobs_already_in_the_cache_are_not_counted_and_removed_files_are_listed(hub, fetch, pulled) -> None:
    repo_id = pulled(model_files("a", **{"notes.txt": b"old notes"}))
    old = hub.head_sha(repo_id)
    fetch(repo_id)
    # Another revision already brought these weights into the cache.
    hub.commit(repo_id, {"model.safetensors": b"z" * 6000})
    fetch(repo_id)
    hub.commit(repo_id, {"model.safetensors": model_files("a")["model.safetensors"]})
    reconcile_cache()
    Snapshot.objects.exclude(commit_sha=old).delete()  # index only the first revision
    hub.commit(repo_id, {"model.safetensors": b"z" * 6000, "README.md": b"# hi"}, delete=["notes.txt"])

    info = _check(repo_id)

    changes = {c.path: (c.change, c.cached) for c in info.changes}
    assert changes == {
        "model.safetensors": ("modified", True),
        "README.md": ("added", False),
        "notes.txt": ("removed", True),
    }
    assert info.bytes_to_fetch == len(b"# hi")
    assert info.categories == ["other", "weights"]


def test_a_private_repo_is_checked_with_the_credential_it_was_pulled_with(hub, fetch, pulled, alice) -> None:
    token = "hf_cacheTestToken1234"
    hub.add_token(token, "alice")
    repo_id = pulled(private=True)
    fetch(repo_id, token=token)
    reconcile_cache()
    repo = Repository.objects.get(repo_id=repo_id)
    credential = credentials.create_credential(owner=alice, name="hub", token=token)
    DownloadJob.objects.create(
        repository=repo,
        node="n",
        state=DownloadJob.State.SUCCEEDED,
        credential=credential,
        requested_by=alice,
    )
    hub.commit(repo_id, {"config.json": b'{"model_type": "llama", "v": 2}'})
    hub.clear_requests()

    info = _check(repo_id)

    assert info.categories == ["config"]
    assert any(r.headers.get("Authorization") == f"Bearer {token}" for r in hub.requests)
    assert Repository.objects.get(repo_id=repo_id).private is True


def test_one_failing_repo_does_not_stop_the_others(hub, fetch, pulled) -> None:
    token = "hf_otherToken99"
    hub.add_token(token, "carol")
    private_id = pulled(private=True)
    fetch(private_id, token=token)
    public_id = pulled()
    _index(public_id, fetch)

    results = {r.repo_id: r for r in check_updates(repo_ids=[private_id, public_id])}

    assert results[private_id].error_code == "auth_required"
    assert results[public_id].error == ""
    assert Repository.objects.get(repo_id=private_id).remote_checked_at is None


def test_a_snapshot_pulled_by_commit_sha_is_pinned(hub, fetch, pulled) -> None:
    repo_id = pulled()
    _index(repo_id, fetch)
    Snapshot.objects.update(ref=hub.head_sha(repo_id))
    hub.commit(repo_id, {"config.json": b"{}"})
    hub.clear_requests()

    [info] = check_updates(repo_ids=[repo_id])

    assert not info.update_available and hub.requests == []
