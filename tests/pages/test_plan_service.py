"""plan_pull: metadata only, nothing written into the HF cache, and the memory verdict arithmetic."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.conf import settings
from huggingface_hub.file_download import repo_folder_name

from models_app.services.errors import DownloadError
from models_app.services.plan import kv_cache_bytes, memory_verdict, plan_pull


@pytest.mark.django_db  # what other machines hold of the repo is in the database
def test_plan_lists_files_and_writes_nothing_to_the_cache(hub, tiny_model_path: Path) -> None:
    from devkit.tinymodel import tiny_model_files

    files = tiny_model_files(tiny_model_path)
    repo_id = f"test-plan/tiny-{uuid.uuid4().hex[:8]}"
    sha = hub.create_repo(repo_id, files)
    plan = plan_pull(repo_id, "main")
    assert plan.commit_sha == sha
    assert {f.path for f in plan.files} == set(files)
    assert plan.total_bytes == sum(p.stat().st_size for p in files.values())
    assert plan.cached_bytes == 0 and plan.is_mlx and plan.can_start
    assert plan.memory.level == "green" and plan.memory.kv_cache_bytes > 0
    assert not (Path(settings.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")).exists()


def test_plan_raises_download_error_codes(hub) -> None:
    with pytest.raises(DownloadError) as info:
        plan_pull(f"test-plan/missing-{uuid.uuid4().hex[:8]}", "main")
    assert info.value.code in ("not_found", "auth_required")


def test_kv_cache_formula() -> None:
    config = {
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_size": 2048,
    }
    # 2 (k and v) * layers * kv_heads * head_dim * context * 2 bytes
    assert kv_cache_bytes(config, 1000) == 2 * 16 * 8 * 64 * 1000 * 2


@pytest.mark.parametrize(
    ("weights", "level"), [(1 * 2**30, "green"), (7 * 2**30, "amber"), (15 * 2**30, "red")]
)
def test_memory_verdict_levels(settings, weights: int, level: str) -> None:
    settings.INFERENCE_MEMORY_BUDGET = 0
    verdict = memory_verdict(
        {"num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 1}, weights, total=10 * 2**30
    )
    assert verdict.level == level
