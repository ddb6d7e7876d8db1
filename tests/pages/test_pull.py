"""The Pull page: a preview from the local Hub (files, sizes, MLX or not, memory verdict), then Start; every
error code shown next to its field with what to do."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from models_app.models import DownloadJob


def new_repo_id(stem: str = "model") -> str:
    return f"test-pages/{stem}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tiny_repo(hub, tiny_model_path: Path) -> str:
    from devkit.tinymodel import tiny_model_files

    repo_id = new_repo_id("tiny")
    hub.create_repo(repo_id, tiny_model_files(tiny_model_path))
    return repo_id


def preview(client, **data):  # type: ignore[no-untyped-def]
    return client.post("/pull/", {"revision": "main", "action": "preview", **data})


def field_error(html: str, field: str) -> str:
    """The text of the error list rendered next to `field` ('' if none)."""
    marker = f'id="id_{field}_error"'
    if marker not in html:
        return ""
    start = html.index(marker)
    return html[start : html.index("</ul>", start)]


def test_it_previews_the_plan(alice_client, tiny_repo: str, tiny_model_path: Path) -> None:
    response = preview(alice_client, repo=tiny_repo)
    html = response.content.decode()
    assert response.status_code == 200, html
    assert 'data-testid="plan"' in html
    assert "model.safetensors" in html and "tokenizer.json" in html
    assert "MLX model" in html or "Loadable by mlx-lm" in html
    assert 'data-level="green"' in html  # a tiny model fits anywhere
    assert "free after" in html
    assert 'value="start"' in html and "disabled" not in html.split('value="start"')[1].split(">")[0]
    assert not DownloadJob.objects.exists()  # a preview downloads nothing


def test_a_pasted_hub_url_works(alice_client, hub, tiny_repo: str) -> None:
    response = preview(alice_client, repo=f"{hub.url}/{tiny_repo}/tree/main")
    assert response.status_code == 200
    assert 'data-testid="plan"' in response.content.decode()


def test_start_creates_the_job_and_goes_to_downloads(alice_client, alice, tiny_repo: str) -> None:
    response = alice_client.post("/pull/", {"repo": tiny_repo, "revision": "main", "action": "start"})
    job = DownloadJob.objects.get(repository__repo_id=tiny_repo)
    assert job.requested_by == alice
    assert response.status_code == 302
    assert response["Location"] == f"/downloads/?job={job.id}#job-{job.id}"


def test_with_a_second_machine_the_page_offers_it_and_its_plan_leaves_the_disk_to_it(  # type: ignore[no-untyped-def]
    alice_client, settings, tiny_repo: str
) -> None:
    """One machine: no choice to make, no field. A second machine's download worker (its presence, in a Redis
    prefix of this test's own) adds the field; its plan leaves disk and cache to that machine's worker."""
    import time

    from models_app.services import workers

    settings.REDIS_PREFIX = f"mlxcr-test-pull-nodes-{time.monotonic_ns()}"
    assert 'name="node"' not in alice_client.get("/pull/").content.decode()

    workers.beat_once(
        hostname="downloads@box-b", queues=["downloads", "maintenance", "node.box-b"], started_at=0
    )
    html = alice_client.get("/pull/").content.decode()
    assert 'name="node"' in html and f"{settings.NODE_NAME} (this one)" in html and ">box-b<" in html

    remote = preview(alice_client, repo=tiny_repo, node="box-b").content.decode()
    assert "to download on box-b" in remote and "free after" not in remote
    assert "disabled" not in remote.split('value="start"')[1].split(">")[0]  # its worker checks the disk
    assert "free after" in preview(alice_client, repo=tiny_repo).content.decode()  # this machine: measured

    response = alice_client.post(
        "/pull/", {"repo": tiny_repo, "revision": "main", "node": "box-b", "action": "start"}
    )
    assert response.status_code == 302
    assert DownloadJob.objects.get(repository__repo_id=tiny_repo).node == "box-b"
    gone = preview(alice_client, repo=tiny_repo, node="box-c")  # not a live machine
    assert gone.status_code == 400 and "Select a valid choice" in field_error(gone.content.decode(), "node")


@pytest.mark.parametrize("bad", ["not a repo", "a/b/c", "../etc", "x" * 300])
def test_it_rejects_bad_repo_id_next_to_the_field(alice_client, db, bad: str) -> None:
    response = preview(alice_client, repo=bad)
    assert response.status_code == 400
    error = field_error(response.content.decode(), "repo")
    assert "Invalid repository id" in error or "does not name a model" in error or "at most" in error


def test_it_rejects_a_bad_revision_next_to_the_field(alice_client, db) -> None:
    response = preview(alice_client, repo="org/name", revision="../../etc")
    assert response.status_code == 400
    assert "Invalid revision" in field_error(response.content.decode(), "revision")


def test_unknown_repo_is_not_found_next_to_the_repo_field(alice_client, hub) -> None:
    response = preview(alice_client, repo=new_repo_id("missing"))
    html = response.content.decode()
    assert response.status_code == 400
    assert "not found" in field_error(html, "repo")
    assert "Check the repository id" in html


def test_unknown_revision_is_shown_next_to_the_revision_field(alice_client, tiny_repo: str) -> None:
    response = preview(alice_client, repo=tiny_repo, revision="no-such-branch")
    assert response.status_code == 400
    assert "revision" in field_error(response.content.decode(), "revision").lower()


def test_private_repo_without_token_links_to_settings(alice_client, hub, tiny_model_path: Path) -> None:
    from devkit.tinymodel import tiny_model_files

    repo_id = new_repo_id("private")
    hub.create_repo(repo_id, tiny_model_files(tiny_model_path), private=True)
    response = preview(alice_client, repo=repo_id)
    html = response.content.decode()
    assert response.status_code == 400
    assert "token" in field_error(html, "credential")
    assert 'href="/settings/#credentials"' in html


def test_gated_repo_links_to_the_licence(alice_client, alice, hub, tiny_model_path: Path) -> None:
    from devkit.tinymodel import tiny_model_files
    from models_app.services.credentials import create_credential

    repo_id = new_repo_id("gated")
    hub.create_repo(repo_id, tiny_model_files(tiny_model_path), gated=True)
    token = f"hf_{uuid.uuid4().hex}"
    hub.add_token(token, "alice")
    credential = create_credential(owner=alice, name="mine", token=token)
    response = preview(alice_client, repo=repo_id, credential=credential.id)
    html = response.content.decode()
    assert response.status_code == 400
    assert "gated" in field_error(html, "repo")
    assert f'href="{hub.url}/{repo_id}"' in html and "Accept the licence" in html
    assert token not in html


def test_private_repo_with_a_token_previews(alice_client, alice, hub, tiny_model_path: Path) -> None:
    from devkit.tinymodel import tiny_model_files
    from models_app.services.credentials import create_credential

    repo_id = new_repo_id("private-ok")
    hub.create_repo(repo_id, tiny_model_files(tiny_model_path), private=True)
    token = f"hf_{uuid.uuid4().hex}"
    hub.add_token(token, "alice")
    credential = create_credential(owner=alice, name="mine", token=token)
    response = preview(alice_client, repo=repo_id, credential=credential.id)
    html = response.content.decode()
    assert response.status_code == 200, html
    assert "badge private" in html
    assert token not in html


def test_a_repo_that_is_not_mlx_cannot_be_started(alice_client, hub) -> None:
    repo_id = new_repo_id("gguf")
    hub.create_repo(
        repo_id, {"config.json": json.dumps({"model_type": "llama"}).encode(), "model.gguf": b"x" * 2000}
    )
    html = preview(alice_client, repo=repo_id).content.decode()
    assert "Not loadable by mlx-lm" in html
    assert 'aria-describedby="cannot-start"' in html  # Start is disabled, and says why


def test_file_patterns_narrow_the_plan(alice_client, tiny_repo: str) -> None:
    html = preview(alice_client, repo=tiny_repo, allow_patterns="*.json").content.decode()
    assert '<td class="mono">config.json' in html
    assert '<td class="mono">model.safetensors' not in html
    # The repo is a model mlx-lm loads; these files alone are not, and the plan says what the pull leaves out.
    assert "Not loadable by mlx-lm" not in html
    assert "the snapshot will be partial (not offered for chat) until a pull adds model.safetensors" in html


def test_a_pattern_that_matches_no_file_is_refused_with_the_file_list(alice_client, tiny_repo: str) -> None:
    response = preview(alice_client, repo=tiny_repo, allow_patterns="*.gguf")
    html = response.content.decode()
    assert response.status_code == 400
    assert "No file of" in html and "config.json, model.safetensors" in html
    start = alice_client.post(
        "/pull/", {"repo": tiny_repo, "revision": "main", "allow_patterns": "*.gguf", "action": "start"}
    )
    assert start.status_code == 400 and "No file of" in start.content.decode()
    assert not DownloadJob.objects.filter(repository__repo_id=tiny_repo).exists()


def test_prefill_from_query_string(alice_client, db) -> None:
    html = alice_client.get("/pull/?repo=org/some-model&revision=v2").content.decode()
    assert 'value="org/some-model"' in html and 'value="v2"' in html


def test_a_hub_failure_is_shown_above_the_form_with_what_to_do(alice_client, hub, tiny_repo: str) -> None:
    hub.faults.fail_500(times=None, path="/api/models/*")
    response = preview(alice_client, repo=tiny_repo)
    html = response.content.decode()
    assert response.status_code == 400
    assert 'class="callout error"' in html and "HTTP 500" in html
    assert "Check the connection to" in html


def test_a_full_disk_is_shown_with_a_link_to_the_cache_page(alice_client, tiny_repo: str, settings) -> None:
    settings.DOWNLOAD_DISK_RESERVE = 10**18  # no disk is that big
    html = preview(alice_client, repo=tiny_repo).content.decode()
    assert "Not enough free disk space" in html
    assert 'aria-describedby="cannot-start"' in html
