"""The management commands, through call_command, on a real cache."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from models_app.models import Snapshot
from models_app.services.reconcile import reconcile_cache
from tests.cache.conftest import age, make_public, model_files, snapshot_of

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def stale(hub, fetch, new_repo_id) -> tuple[str, str]:
    """One model unused for 40 days, one used yesterday."""
    stale_id, fresh_id = new_repo_id("stale"), new_repo_id("fresh")
    for repo_id in (stale_id, fresh_id):
        hub.create_repo(repo_id, model_files(repo_id))
        fetch(repo_id)
    reconcile_cache()
    make_public(stale_id)
    age(snapshot_of(stale_id, hub.head_sha(stale_id)), used_days=40)
    age(snapshot_of(fresh_id, hub.head_sha(fresh_id)), used_days=1)
    return stale_id, hub.head_sha(stale_id)


def test_models_lists_snapshots_as_a_table_and_as_json(stale) -> None:
    repo_id, sha = stale

    table = run("models")
    assert table.splitlines()[0].split() == [
        "REPO",
        "REF",
        "SHA",
        "STATUS",
        "SIZE",
        "LAST",
        "USED",
        "UPDATE",
        "PATH",
    ]
    assert any(
        line.startswith(repo_id) and sha[:8] in line and "40d ago" in line for line in table.splitlines()
    )

    data = json.loads(run("models", "--json"))
    assert len(data) == 2
    row = next(r for r in data if r["repo_id"] == repo_id)
    assert row["commit_sha"] == sha and row["status"] == "ready" and row["ref"] == "main"
    assert row["size_bytes"] == sum(len(v) for v in model_files(repo_id).values())
    assert row["path"].endswith(sha) and row["private"] is False


def test_cache_clean_is_a_dry_run_until_yes(stale) -> None:
    repo_id, sha = stale
    size = sum(len(v) for v in model_files(repo_id).values())

    dry = run("cache-clean", "--max-age", "30d")

    assert repo_id in dry and "older than 30 days unused" in dry
    assert f"Would free {size / 1000:.1f} kB ({size} bytes) in 1 item(s). Dry run" in dry
    assert snapshot_of(repo_id, sha).status == Snapshot.Status.READY
    assert Path(snapshot_of(repo_id, sha).path).is_dir()

    done = run("cache-clean", "--max-age", "30d", "--yes")

    assert f"Freed {size / 1000:.1f} kB ({size} bytes) in 1 item(s)." in done
    assert snapshot_of(repo_id, sha).status == Snapshot.Status.DELETED
    assert not Path(snapshot_of(repo_id, sha).path).exists()
    assert run("cache_clean", "--max-age", "30d") == "Nothing to clean.\n"


def test_cache_clean_json_and_size_budget(stale, settings) -> None:
    repo_id, _ = stale

    plan = json.loads(run("cache_clean", "--max-size", "1KB", "--keep-revisions", "0", "--json"))

    assert plan["dry_run"] is True and plan["max_size"] == 1000 and plan["keep_revisions"] is None
    assert plan["items"][0]["repo_id"] == repo_id  # least recently used first
    assert {i["reason"] for i in plan["items"]} == {"over size budget"}
    assert plan["total_bytes"] == sum(i["bytes"] for i in plan["items"])


def test_cache_clean_rejects_bad_units_and_unknown_roots(cache_root) -> None:
    with pytest.raises(CommandError, match="not a size"):
        run("cache-clean", "--max-size", "lots")
    with pytest.raises(CommandError, match="not a duration"):
        run("cache-clean", "--max-age", "a fortnight")
    with pytest.raises(CommandError, match="unknown_cache_root"):
        run("cache-clean", "--cache", "usb")


def test_rm_shows_the_plan_then_deletes_with_yes(stale) -> None:
    repo_id, sha = stale

    dry = run("rm", repo_id)
    assert sha[:8] in dry and "Re-run with --yes" in dry
    assert snapshot_of(repo_id, sha).status == Snapshot.Status.READY

    done = run("rm", repo_id, "--revision", sha[:8], "--yes")
    assert "Deleted 1 snapshot(s)" in done
    assert snapshot_of(repo_id, sha).status == Snapshot.Status.DELETED

    with pytest.raises(CommandError, match="model_not_found"):
        run("rm", repo_id, "--yes")


def test_verify_reports_and_fails_on_a_corrupted_file(stale) -> None:
    repo_id, sha = stale
    assert f"{repo_id}@{sha[:8]}: ready (4 files" in run("verify", repo_id)

    blob = (Path(snapshot_of(repo_id, sha).path) / "tokenizer.json").resolve()
    blob.write_bytes(blob.read_bytes().upper())
    out = StringIO()
    with pytest.raises(CommandError, match="integrity"):
        call_command("verify", repo_id, "--revision", "main", stdout=out)
    assert "corrupt: tokenizer.json (git blob sha1 differs)" in out.getvalue()


def test_updates_reports_changes_as_json(stale, hub) -> None:
    repo_id, _ = stale
    hub.commit(repo_id, {"model.safetensors": b"n" * 2000})

    results = {r["repo_id"]: r for r in json.loads(run("updates", "--json"))}

    assert results[repo_id]["update_available"] is True
    assert results[repo_id]["categories"] == ["weights"]
    assert results[repo_id]["bytes_to_fetch"] == 2000
    assert "update: weights" in run("updates", repo_id)


def test_register_local_registers_a_directory(tmp_path, settings, staff, cache_root) -> None:
    root = tmp_path / "local"
    (root / "mine").mkdir(parents=True)
    for name, data in model_files("mine").items():
        (root / "mine" / name).write_bytes(data)
    settings.LOCAL_MODEL_ROOTS = {"local": root}

    assert "Registered mine (llama" in run("register-local", "mine", str(root / "mine"))
    with pytest.raises(CommandError, match=r"invalid_local_model: .* is not inside a local model root"):
        run("register_local", "other", str(tmp_path))
