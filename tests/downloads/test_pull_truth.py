"""Issue 14, items 1-5: pulls that never lie. Each test is the issue's own reproduction, through the real
download worker against the local Hub over HTTP."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from models_app.api.serializers import SnapshotSerializer
from models_app.models import DownloadJob, Repository, Snapshot
from models_app.openai.views import _ready_models
from models_app.selectors.snapshots import model_list
from models_app.services import credentials
from models_app.services import hub as hub_service
from models_app.services.chat import usable_snapshots
from models_app.services.errors import INVALID_REQUEST, DownloadError, action_for_job
from models_app.services.verify import verify_model
from tests.downloads.conftest import resolve_requests, wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]

TOKEN = "hf_DefaultToken00011122233344455"
OTHER_TOKEN = "hf_OtherToken000111222333444999"


def fetched_files(hub, repo_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(r.path.rsplit("/", 1)[-1] for r in resolve_requests(hub, repo_id))


# --- 1. allow_patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize("patterns", [["../../x"], ["/etc/passwd"], ["ok/*.json", "a/../b"], ["C:\\x"]])
def test_patterns_that_climb_out_of_the_repo_are_refused_before_any_job(publish, patterns) -> None:
    repo_id, _ = publish()

    with pytest.raises(DownloadError) as refused:
        hub_service.download_model(repo_id, allow_patterns=patterns)

    assert refused.value.code == INVALID_REQUEST and "Invalid allow pattern" in refused.value.message
    assert not DownloadJob.objects.filter(repository__repo_id=repo_id).exists()


def test_a_filtered_pull_adds_files_and_never_shrinks_a_ready_snapshot(
    hub, publish, tiny_files, alice
) -> None:
    repo_id, _sha = publish()
    full = wait_job(hub_service.download_model(repo_id)).snapshot
    assert full.status == Snapshot.Status.READY and len(full.files) == len(tiny_files)

    job = wait_job(hub_service.download_model(repo_id, allow_patterns=["*.json"]))

    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    snapshot = Snapshot.objects.get(id=full.id)
    assert snapshot.status == Snapshot.Status.READY and snapshot.missing_files == []
    assert sorted(f["path"] for f in snapshot.files) == sorted(tiny_files)
    assert snapshot.size_bytes == full.size_bytes
    assert snapshot.id in {s.id for s in usable_snapshots(alice)}


def test_a_pattern_that_matches_no_file_fails_the_job_with_the_file_list(publish, alice) -> None:
    repo_id, _ = publish()

    job = wait_job(hub_service.download_model(repo_id, allow_patterns=["*.gguf"], user=alice))

    assert (job.state, job.error_code) == ("failed", INVALID_REQUEST)
    assert "'*.gguf'" in job.error_message and "config.json" in job.error_message
    assert "model.safetensors" in job.error_message
    assert not Snapshot.objects.filter(repository__repo_id=repo_id).exists()


def test_part_of_a_model_is_a_partial_snapshot_never_offered_for_chat(hub, publish, alice) -> None:
    repo_id, _sha = publish()

    job = wait_job(hub_service.download_model(repo_id, allow_patterns=["config.json"], user=alice))

    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    partial = job.snapshot
    assert partial.status == Snapshot.Status.PARTIAL
    assert [f["path"] for f in partial.files] == ["config.json"]
    assert "model.safetensors" in partial.missing_files and "tokenizer.json" in partial.missing_files
    assert repo_id not in {m["id"] for m in _ready_models(alice)}  # /v1/models
    assert partial.id not in {s.id for s in usable_snapshots(alice)}  # the chat page's list
    assert verify_model(partial).status == Snapshot.Status.PARTIAL  # sound files, still not loadable

    # A pull without patterns completes it: ready, chat-able, nothing missing.
    done = wait_job(hub_service.download_model(repo_id, user=alice))
    assert done.state == "succeeded" and done.snapshot_id == partial.id
    partial.refresh_from_db()
    assert partial.status == Snapshot.Status.READY and partial.missing_files == []
    assert repo_id in {m["id"] for m in _ready_models(alice)}


# --- 2. a snapshot known invalid is repaired by one pull ----------------------------------------------------


def test_after_verify_finds_a_flipped_byte_one_pull_refetches_the_bad_file(hub, publish, tiny_files) -> None:
    repo_id, _sha = publish()
    snapshot = wait_job(hub_service.download_model(repo_id)).snapshot
    blob = (Path(snapshot.path) / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = StringIO()
    with pytest.raises(CommandError) as verify_failed:
        call_command("verify", repo_id, stdout=out)
    assert "corrupt: model.safetensors" in out.getvalue()
    hub.clear_requests()

    job = wait_job(hub_service.download_model(repo_id))

    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    assert fetched_files(hub, repo_id) == ["model.safetensors"]  # only the bad file, once
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.READY
    assert verify_model(snapshot).status == Snapshot.Status.READY
    # ...and verify said what that pull would do.
    assert "fetches the missing and corrupt files again, in one go" in str(verify_failed.value)
    assert f"manage.py pull {repo_id}" in str(verify_failed.value)


# --- 3. Hub URLs in the CLI ---------------------------------------------------------------------------------


def test_the_cli_pulls_a_hub_url_with_and_without_a_tree_revision(hub, publish) -> None:
    repo_id, sha = publish()
    tagged = hub.commit(repo_id, {"extra.txt": b"a later commit"})
    hub.add_tag(repo_id, "v1", sha)
    out = StringIO()

    call_command("pull", f"{settings.HF_ENDPOINT}/{repo_id}", "--timeout", "120", stdout=out)
    call_command("pull", f"https://huggingface.co/{repo_id}/tree/v1", "--timeout", "120", stdout=out)

    jobs = {j.revision: j for j in DownloadJob.objects.filter(repository__repo_id=repo_id)}
    assert sorted(jobs) == ["main", "v1"]
    assert jobs["main"].state == jobs["v1"].state == "succeeded"
    assert jobs["main"].commit_sha == tagged and jobs["v1"].commit_sha == sha
    assert f"Pulled {repo_id}@v1 ({sha[:8]})" in out.getvalue()


# --- 4. the default token -----------------------------------------------------------------------------------


def test_a_pull_that_names_no_token_uses_the_default_one_and_says_so(hub, publish, alice) -> None:
    repo_id, _ = publish("private", private=True)
    hub.add_token(TOKEN, "alice", can_read=[repo_id])
    stored = credentials.create_credential(owner=alice, name="work", token=TOKEN)
    out = StringIO()

    call_command("pull", repo_id, "--user", "alice", "--timeout", "120", stdout=out)

    job = DownloadJob.objects.get(repository__repo_id=repo_id)
    assert (job.state, job.credential_id) == ("succeeded", stored.id)
    stored.refresh_from_db()
    assert stored.is_default  # a user's first token is their default
    assert f"Hub token: “work” (hf_****{TOKEN[-4:]}), the default one." in out.getvalue()
    assert TOKEN not in out.getvalue()


def test_when_no_stored_token_can_read_the_repo_the_action_names_them(hub, publish, alice) -> None:
    repo_id, _ = publish("private", private=True)
    hub.add_token(OTHER_TOKEN, "alice", can_read=[])
    first = credentials.create_credential(owner=alice, name="personal", token=OTHER_TOKEN)
    credentials.create_credential(owner=alice, name="spare", token=OTHER_TOKEN[:-4] + "0000")

    job = wait_job(hub_service.download_model(repo_id, user=alice))

    assert job.state == "failed" and job.credential_id == first.id
    assert f"The pull used the token “personal” (hf_****{OTHER_TOKEN[-4:]})." in job.error_message
    action = action_for_job(job)
    assert "“personal” (hf_****" in action and "“spare” (hf_****0000)" in action
    assert "--credential NAME" in action and "default in Settings" in action
    assert OTHER_TOKEN not in action and OTHER_TOKEN not in job.error_message

    # With no token at all, the action says to add one.
    repo_2, _ = publish("private", private=True)
    anonymous = wait_job(hub_service.download_model(repo_2))
    assert anonymous.error_code == "auth_required" and "Add a Hugging Face token" in action_for_job(anonymous)


# --- 5. updates, revisions, cleanup -------------------------------------------------------------------------


def test_after_pulling_the_update_no_snapshot_shows_an_update(hub, publish) -> None:
    repo_id, old_sha = publish()
    wait_job(hub_service.download_model(repo_id))
    new_sha = hub.commit(repo_id, {"generation_config.json": b'{"temperature": 0.5}'})
    call_command("updates", repo_id, stdout=StringIO())
    assert Repository.objects.get(repo_id=repo_id).update_available
    old = Snapshot.objects.select_related("repository").get(repository__repo_id=repo_id)
    assert SnapshotSerializer(old).data["update_available"] is True

    job = wait_job(hub_service.download_model(repo_id))

    assert job.state == "succeeded" and job.commit_sha == new_sha
    assert not Repository.objects.get(repo_id=repo_id).update_available
    rows = {m.commit_sha: m for m in model_list(user=None) if m.repo_id == repo_id}
    assert set(rows) == {old_sha, new_sha}
    assert not any(m.update_available for m in rows.values())
    out = StringIO()
    call_command("models", stdout=out)
    line = next(line for line in out.getvalue().splitlines() if new_sha[:8] in line)
    assert " yes " not in line
    api = Snapshot.objects.select_related("repository").filter(repository__repo_id=repo_id)
    assert [SnapshotSerializer(s).data["update_available"] for s in api] == [False, False]


def test_an_unknown_revision_is_named_in_the_error(publish) -> None:
    repo_id, _ = publish()

    job = wait_job(hub_service.download_model(repo_id, "no-such-branch"))

    assert job.error_code == "revision_not_found"
    assert "'no-such-branch'" in job.error_message


def test_updates_text_and_json_agree_on_a_commit_without_file_changes(hub, publish) -> None:
    repo_id, _ = publish()
    wait_job(hub_service.download_model(repo_id))
    hub.commit(repo_id, {})  # a new commit, the same files
    text, data = StringIO(), StringIO()

    call_command("updates", repo_id, stdout=text)
    call_command("updates", repo_id, "--json", stdout=data)

    (result,) = json.loads(data.getvalue())
    assert result["update_available"] and result["changes"] == [] and result["categories"] == []
    assert "update: new commit, no file changes" in text.getvalue()
    assert "metadata" not in text.getvalue()


def test_cache_clean_help_says_that_no_options_delete_superseded_revisions() -> None:
    from models_app.management.commands.cache_clean import Command

    parser = Command().create_parser("manage.py", "cache-clean")
    text = " ".join(parser.format_help().split())
    assert "With no options" in text and "superseded" in text
    assert "CACHE_CLEANUP_KEEP_REVISIONS, 1" in text


def test_a_filtered_pull_of_an_invalid_snapshot_never_calls_a_corrupt_file_sound(hub, publish) -> None:
    repo_id, _ = publish()
    snapshot = wait_job(hub_service.download_model(repo_id)).snapshot
    blob = (Path(snapshot.path) / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert verify_model(snapshot).status == Snapshot.Status.INVALID

    job = wait_job(hub_service.download_model(repo_id, allow_patterns=["*.json"]))

    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    snapshot.refresh_from_db()
    # The corrupt weights were outside the patterns: deleted, and the snapshot says they are missing.
    assert snapshot.status == Snapshot.Status.PARTIAL and snapshot.missing_files == ["model.safetensors"]
    assert "model.safetensors" not in {f["path"] for f in snapshot.files}
    done = wait_job(hub_service.download_model(repo_id))
    assert done.state == "succeeded"
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.READY and verify_model(snapshot).ok
