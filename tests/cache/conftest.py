"""Fixtures for the cache tests: a private HF cache per test, filled by huggingface_hub's real
snapshot_download from the local Hub, and indexed by reconcile (as it would index another tool's download)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from huggingface_hub import snapshot_download

from models_app.models import Repository, Snapshot


def model_files(seed: str = "a", *, weights: bytes | None = None, **overrides: bytes) -> dict[str, bytes]:
    """A small repo that passes the MLX checks (config model_type, safetensors weights, tokenizer)."""
    files = {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 8, "seed": seed}).encode(),
        "model.safetensors": weights if weights is not None else (seed.encode() * 5000)[:5000],
        "tokenizer.json": b'{"version": "1.0", "model": {}}',
        "tokenizer_config.json": json.dumps(
            {"chat_template": "{{ messages }}", "eos_token": "</s>"}
        ).encode(),
    }
    files.update(overrides)
    return files


@pytest.fixture
def cache_root(tmp_path: Path, settings: Any) -> Path:
    root = tmp_path / "hf-cache"
    root.mkdir()
    settings.HF_HUB_CACHE = root
    settings.CACHE_ROOTS = {"default": root}
    return root


@pytest.fixture
def new_repo_id() -> Callable[[str], str]:
    """Repo ids unique in the session-wide local Hub."""
    return lambda stem="model": f"test-org/{stem}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fetch(hub: Any, cache_root: Path) -> Callable[..., Path]:
    """Download like `hf download` / mlx_lm would: real snapshot_download into the test cache."""

    def fetch(
        repo_id: str, revision: str | None = None, *, root: Path | None = None, token: str | None = None
    ):
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=root or cache_root,
                endpoint=hub.url,
                token=token or False,
            )
        )

    return fetch


@pytest.fixture
def xet_fetch(tmp_path: Path, cache_root: Path):  # type: ignore[no-untyped-def]
    """A Xet-mode local Hub of this test's own (its CAS is read by this process only), and a real
    snapshot_download from it into the test cache: file bytes land in the shared store."""
    from huggingface_hub import snapshot_download

    from devkit.localhub import LocalHub

    hub = LocalHub(tmp_path / "xet-hub", xet=True).start()

    def fetch(repo_id: str) -> Path:
        return Path(snapshot_download(repo_id, cache_dir=cache_root, endpoint=hub.url, token=False))

    yield hub, fetch
    hub.stop()


def snapshot_of(repo_id: str, sha: str) -> Snapshot:
    return Snapshot.objects.select_related("repository").get(repository__repo_id=repo_id, commit_sha=sha)


def make_public(repo_id: str) -> None:
    Repository.objects.filter(repo_id=repo_id).update(private=False)


def age(snapshot: Snapshot, *, used_days: float | None = None, downloaded_days: float | None = None) -> None:
    now = timezone.now()
    fields: dict[str, Any] = {}
    if used_days is not None:
        fields["last_used_at"] = now - timedelta(days=used_days)
    if downloaded_days is not None:
        fields["downloaded_at"] = now - timedelta(days=downloaded_days)
    Snapshot.objects.filter(id=snapshot.id).update(**fields)
