"""The model registry: loads on first use, keeps models warm for their keep-alive, stays within its count and
memory bounds (least recently used out first), and casts half precision to float32 on the CPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from mlx.utils import tree_flatten

from models_app.services.engine.prompt_cache import PromptCache
from models_app.services.engine.registry import ModelLoadError, ModelRegistry, ModelSpec, estimate_bytes

GiB = 2**30


class CountingLoader:
    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, path: str, **kwargs):  # type: ignore[no-untyped-def]
        self.paths.append(path)
        return mlx_lm.load(path, **kwargs)


def registry(loader=None, **overrides) -> ModelRegistry:  # type: ignore[no-untyped-def]
    options = {"max_models": 2, "memory_budget": GiB, "keep_alive": 300.0, "cast_float32": True}
    options.update(overrides)
    return ModelRegistry(loader=loader or CountingLoader(), **options)


def spec(path: Path, snapshot_id: int = 1) -> ModelSpec:
    return ModelSpec(snapshot_id=snapshot_id, repo_id=f"test/model-{snapshot_id}", path=str(path))


@pytest.fixture(scope="module")
def half_model_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """The tiny model with float16 weights, like most mlx-community uploads' scales."""
    path = tmp_path_factory.mktemp("half-model")
    for item in tiny_model_path.iterdir():
        shutil.copy(item, path / item.name)
    weights = mx.load(str(tiny_model_path / "model.safetensors"))
    mx.save_safetensors(
        str(path / "model.safetensors"),
        {k: v.astype(mx.float16) for k, v in weights.items()},
        {"format": "mlx"},
    )
    return path


def dtypes(model) -> set:  # type: ignore[no-untyped-def]
    return {value.dtype for _, value in tree_flatten(model.parameters())}


def test_it_loads_on_first_use_only(tiny_model_path: Path) -> None:
    loader = CountingLoader()
    models = registry(loader)
    first = models.get(spec(tiny_model_path))
    again = models.get(spec(tiny_model_path))
    assert first is again
    assert loader.paths == [str(tiny_model_path)]
    assert first.context_length == 512
    assert first.nbytes > 0
    [status] = models.status()
    assert status["snapshot_id"] == 1 and status["repo_id"] == "test/model-1"
    assert status["memory_bytes"] == first.nbytes
    assert status["expires_at"] == pytest.approx(first.last_used + 300.0)


def test_it_casts_half_precision_parameters_to_float32(half_model_path: Path) -> None:
    assert dtypes(mlx_lm.load(str(half_model_path))[0]) == {mx.float16}
    cast = registry(cast_float32=True).get(spec(half_model_path))
    assert dtypes(cast.model) == {mx.float32}
    kept = registry(cast_float32=False).get(spec(half_model_path))
    assert dtypes(kept.model) == {mx.float16}
    assert cast.nbytes == 2 * kept.nbytes


def test_it_keeps_quantized_weights_as_integers(tmp_path: Path) -> None:
    from devkit.tinymodel import tiny_model_dir

    path = tiny_model_dir(tmp_path, quantize=True)
    loaded = registry().get(spec(path))
    kinds = dtypes(loaded.model)
    assert mx.uint32 in kinds and mx.float16 not in kinds and mx.bfloat16 not in kinds


def test_keep_alive_unloads_an_idle_model(tiny_model_path: Path) -> None:
    models = registry(keep_alive=60.0)
    entry = models.get(spec(tiny_model_path))
    assert models.expire_idle(now=entry.last_used + 59) == []
    assert models.expire_idle(now=entry.last_used + 61) == [1]
    assert 1 not in models


def test_keep_alive_per_request(tiny_model_path: Path) -> None:
    models = registry(keep_alive=60.0)
    with models.use(spec(tiny_model_path, 1), keep_alive=0):
        assert 1 in models  # never unloaded while in use
    assert 1 not in models  # keep_alive 0: unloaded right after
    with models.use(spec(tiny_model_path, 2), keep_alive=None):
        pass
    assert models.expire_idle(now=10**12) == []  # None: kept until evicted
    assert models.status()[0]["expires_at"] is None


def test_a_model_in_use_never_expires(tiny_model_path: Path) -> None:
    models = registry(keep_alive=1.0)
    with models.use(spec(tiny_model_path)) as entry:
        assert models.expire_idle(now=entry.last_used + 3600) == []
        assert models.status()[0]["busy"] is True


def test_lru_bound_evicts_the_least_recently_used(tiny_model_path: Path) -> None:
    models = registry(max_models=2)
    models.get(spec(tiny_model_path, 1))
    models.get(spec(tiny_model_path, 2))
    models.get(spec(tiny_model_path, 1))  # 2 is now the least recently used
    models.get(spec(tiny_model_path, 3))
    assert sorted(models.loaded_ids()) == [1, 3]
    assert [s["snapshot_id"] for s in models.status()] == [3, 1]  # most recent first


def test_memory_budget_evicts_to_make_room(tiny_model_path: Path) -> None:
    one = estimate_bytes(tiny_model_path, cast_float32=True)
    models = registry(max_models=10, memory_budget=int(one * 1.5))
    models.get(spec(tiny_model_path, 1))
    models.get(spec(tiny_model_path, 2))
    assert models.loaded_ids() == [2]
    assert models.memory_used() <= int(one * 1.5)


def test_a_model_bigger_than_the_budget_is_refused(tiny_model_path: Path) -> None:
    models = registry(memory_budget=1000)
    with pytest.raises(ModelLoadError, match="INFERENCE_MEMORY_BUDGET"):
        models.get(spec(tiny_model_path))
    assert len(models) == 0


def test_it_never_hands_mlx_lm_a_path_that_is_not_a_local_directory(tmp_path: Path) -> None:
    loader = CountingLoader()
    models = registry(loader)
    # mlx_lm.load would take "org/name" for a Hub repo id and download it.
    for path in ("mlx-community/SmolLM2-135M-Instruct-8bit", str(tmp_path / "gone")):
        with pytest.raises(ModelLoadError, match="missing"):
            models.get(ModelSpec(snapshot_id=1, repo_id="x/y", path=path))
    assert loader.paths == []


def test_a_broken_model_is_a_load_error(broken_model_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        registry().get(spec(broken_model_path))


def test_unloading_drops_the_models_prompt_caches(tiny_model_path: Path) -> None:
    from mlx_lm.models.cache import make_prompt_cache

    models = registry()
    prompts = PromptCache(max_entries=4, max_bytes=GiB)
    models.on_unload(prompts.drop_snapshot)
    entry = models.get(spec(tiny_model_path))
    cache = make_prompt_cache(entry.model)
    entry.model(mx.array([[1, 5, 6]]), cache=cache)
    assert prompts.insert(1, [1, 5, 6], cache)
    assert models.unload(1)
    assert len(prompts) == 0


def test_only_the_loader_or_staff_unloads_and_never_a_model_in_use(tiny_model_path: Path) -> None:
    """Issue 11 item 12: `by_user` is a non-staff user's id; None is staff or the system."""
    alice, bob = 1, 2
    models = registry()
    models.get(spec(tiny_model_path, 1), user_id=alice)
    assert models.status()[0]["loaded_by"] == alice
    with models.use(spec(tiny_model_path, 1), user_id=bob):  # Bob chats with Alice's model: fine
        assert models.unload(1) is False  # not even staff cuts a running answer
        assert models.unload(1, by_user=alice) is False
    assert models.unload(1, by_user=bob) is False and 1 in models
    assert models.unload(1, by_user=alice) is True and 1 not in models

    models.get(spec(tiny_model_path, 1), user_id=alice)
    assert models.unload(1) is True  # staff


def test_an_unload_asked_during_answers_happens_when_the_last_one_ends(tiny_model_path: Path) -> None:
    """Answers are batched, so the Unload task runs beside them: it waits for them instead of cutting one,
    and still happens (only for who may unload)."""
    alice, bob = 1, 2
    models = registry()
    first = models.acquire(spec(tiny_model_path, 1), user_id=alice)
    second = models.acquire(spec(tiny_model_path, 1), user_id=bob)
    assert models.unload_after_use(1, by_user=bob) is False and not first.unload_when_idle  # not Bob's
    assert models.unload_after_use(1) is False and 1 in models  # staff: later
    models.release(first)
    assert 1 in models  # Bob's answer still runs
    models.release(second)
    assert 1 not in models

    models.get(spec(tiny_model_path, 1), user_id=alice)
    assert models.unload_after_use(1, by_user=alice) is True and 1 not in models  # idle: at once


def test_another_users_keep_alive_does_not_unload_the_loaders_model(tiny_model_path: Path) -> None:
    alice, bob = 1, 2
    models = registry(keep_alive=60.0)
    models.get(spec(tiny_model_path, 1), user_id=alice)
    with models.use(spec(tiny_model_path, 1), keep_alive=0, user_id=bob):
        pass
    assert 1 in models  # Bob's keep_alive=0 would be an unload by the back door
    assert models.status()[0]["expires_at"] is not None
    with models.use(spec(tiny_model_path, 1), keep_alive=0, user_id=alice):
        pass
    assert 1 not in models  # Alice's own keep_alive=0 applies
