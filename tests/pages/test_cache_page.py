"""The Cache page: space by model for everyone; for staff a cleanup policy previewed (what goes, how much it
frees, orphaned partial files) and then run after an explicit confirmation. Real files: the local Hub,
huggingface_hub's snapshot_download, and reconcile to index them."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import snapshot_download
from huggingface_hub.file_download import repo_folder_name

from dashboard.views.cache import TOP_REPOS
from models_app.models import Repository, Snapshot
from models_app.services.reconcile import reconcile_cache
from tests.factories import make_snapshot


def files(seed: str) -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"model_type": "llama", "seed": seed}).encode(),
        "model.safetensors": (seed.encode() * 4000)[:4000],
        "tokenizer.json": b'{"version": "1.0", "model": {}}',
    }


@pytest.fixture
def cache_root(tmp_path: Path, settings: Any) -> Path:
    root = tmp_path / "hf-cache"
    root.mkdir()
    settings.HF_HUB_CACHE = root
    settings.CACHE_ROOTS = {"default": root}
    return root


@pytest.fixture
def two_revisions(hub, cache_root: Path, staff) -> dict[str, Any]:
    """A public repo with an old and a new revision, both cached and indexed."""
    repo_id = f"test-pages-cache/model-{uuid.uuid4().hex[:8]}"
    old = hub.create_repo(repo_id, files("old"))
    snapshot_download(repo_id, revision=old, cache_dir=cache_root, endpoint=hub.url, token=False)
    new = hub.commit(repo_id, files("new"))
    snapshot_download(repo_id, revision=new, cache_dir=cache_root, endpoint=hub.url, token=False)
    reconcile_cache()
    Repository.objects.filter(repo_id=repo_id).update(private=False, owner=staff)
    # The newer commit is the newer download.
    Snapshot.objects.filter(commit_sha=old).update(downloaded_at="2020-01-01T00:00:00Z")
    return {"repo_id": repo_id, "old": old, "new": new}


def test_everyone_sees_space_by_model_but_only_staff_clean(client, alice, two_revisions) -> None:
    client.force_login(alice)
    html = client.get("/cache/").content.decode()
    assert two_revisions["repo_id"] in html and "Space by model" in html
    assert "Cleanup" not in html and "for staff" in html
    assert client.post("/cache/", {"action": "run", "keep_revisions": 1, "confirm": "on"}).status_code == 403
    assert Snapshot.objects.filter(status=Snapshot.Status.DELETED).count() == 0


def test_preview_then_run_with_confirmation(client, staff, two_revisions) -> None:
    client.force_login(staff)
    preview = client.post("/cache/", {"action": "preview", "keep_revisions": 1})
    html = preview.content.decode()
    assert preview.status_code == 200
    assert "superseded revision" in html and two_revisions["old"][:8] in html
    assert "Yes, delete these files" in html  # the confirmation box appears with the preview

    unconfirmed = client.post("/cache/", {"action": "run", "keep_revisions": 1})
    assert unconfirmed.status_code == 400
    assert 'id="id_confirm_error"' in unconfirmed.content.decode()
    assert not Snapshot.objects.filter(status=Snapshot.Status.DELETED).exists()

    done = client.post("/cache/", {"action": "run", "keep_revisions": 1, "confirm": "on"}, follow=True)
    assert "Cleanup done: 1 item(s) removed" in done.content.decode()
    old = Snapshot.objects.get(commit_sha=two_revisions["old"])
    assert old.status == Snapshot.Status.DELETED
    assert Snapshot.objects.get(commit_sha=two_revisions["new"]).status == Snapshot.Status.READY


def test_bad_policy_values_are_shown_next_to_the_field(client, staff, cache_root: Path) -> None:
    client.force_login(staff)
    response = client.post("/cache/", {"action": "preview", "keep_revisions": 0, "max_size_gb": "-1"})
    html = response.content.decode()
    assert response.status_code == 400
    assert 'id="id_keep_revisions_error"' in html and 'id="id_max_size_gb_error"' in html


def test_orphaned_partial_files_are_listed(client, staff, two_revisions, cache_root: Path) -> None:
    blobs = cache_root / repo_folder_name(repo_id=two_revisions["repo_id"], repo_type="model") / "blobs"
    partial = blobs / f"{'e' * 64}.incomplete"
    partial.write_bytes(b"x" * 1234)
    an_hour_ago = time.time() - 3600
    os.utime(partial, (an_hour_ago, an_hour_ago))
    client.force_login(staff)
    html = client.get("/cache/").content.decode()
    assert "Orphaned files" in html and partial.name in html


@pytest.mark.django_db
def test_the_heading_counts_every_model_not_only_the_biggest_shown(client, alice, cache_root: Path) -> None:
    for i in range(TOP_REPOS + 2):
        make_snapshot(f"org/model-{i:02d}", size=1000 + i)
    client.force_login(alice)

    html = client.get("/cache/").content.decode()

    # The total covers every model, so does the count beside it; the list shows the biggest TOP_REPOS.
    assert f"in {TOP_REPOS + 2} models" in html
    assert "org/model-16" in html and "org/model-00" not in html
