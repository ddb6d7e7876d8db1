"""A family of MLX conversions of one base model on the local Hub, under a name no other test uses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache


@dataclass
class Family:
    word: str  # unique search word in every repo id
    base: str  # the base model the conversions name
    q4: str  # 4-bit conversion (config quantization, card names the base)
    full: str  # unquantized conversion, grouped by its name only
    other: str  # another model matching the search, not MLX


def discover_cache_keys() -> list[bytes]:
    """This test worker's Discover entries in the shared Redis cache (its KEY_PREFIX keeps other workers' and
    Celery's keys out of reach)."""
    client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    return list(client.scan_iter(match=f"{prefix}:*:discover:*", count=1000))


@pytest.fixture(autouse=True)
def _empty_discover_cache() -> None:
    if not settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        cache.clear()  # CACHE_URL=locmem://: this process's memory only
        return
    # Not cache.clear(): in Redis that is FLUSHDB, every test worker's keys (and Celery's) gone.
    if keys := discover_cache_keys():
        cache._cache.get_client(write=True).delete(*keys)  # type: ignore[attr-defined]


@pytest.fixture
def family(hub, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Family:
    from devkit.tinymodel import tiny_model_dir, tiny_model_files

    word = f"disc{uuid.uuid4().hex[:8]}"
    quantized = tiny_model_dir(tiny_model_path.parent, quantize=True)
    base = f"base-org/Tiny{word}-7B"
    fam = Family(
        word=word,
        base=base,
        q4=f"mlx-test/Tiny{word}-7B-4bit",
        full=f"mlx-test/Tiny{word}-7B-bf16",
        other=f"pt-org/Tiny{word}-torch",
    )
    hub.create_repo(
        fam.q4,
        tiny_model_files(quantized),
        info={"downloads": 50, "likes": 3, "cardData": {"base_model": base}, "tags": ["mlx", "4-bit"]},
    )
    hub.create_repo(
        fam.full, tiny_model_files(tiny_model_path), info={"downloads": 900, "likes": 7, "trendingScore": 5}
    )
    hub.create_repo(
        fam.other,
        {"pytorch_model.bin": b"\0" * 64, "config.json": b'{"model_type": "llama"}'},
        info={"library_name": "transformers", "tags": ["transformers"], "downloads": 10_000},
    )
    return fam
