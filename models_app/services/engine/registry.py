"""Models kept loaded in the inference worker, like Ollama does: an LRU keyed by snapshot id, with a keep-alive
per model, a bound on the number of models and a memory budget.

The registry never reads the database: callers hand it a `ModelSpec` built from a Snapshot row, so the only
path mlx-lm ever sees is one the app resolved itself (never user text), and the registry can be tested alone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

import mlx.core as mx
import mlx_lm
from mlx.utils import tree_flatten, tree_map

from models_app.services.cache_layout import context_length
from models_app.services.engine.prefill import PrefillPace

log = logging.getLogger(__name__)

# Used when a config names no context window at all (rare: every llama-style config has one).
DEFAULT_CONTEXT_LENGTH = 4096
_HALF = ("float16", "bfloat16")


class ModelLoadError(Exception):
    """The snapshot could not be loaded; the message says why in words a user can act on."""

    code = "model_load_failed"


@dataclass(frozen=True)
class ModelSpec:
    snapshot_id: int
    repo_id: str
    path: str


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    context_length: int
    nbytes: int
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    keep_alive: float | None = None  # seconds after last use; None: until evicted
    busy: int = 0
    prefill: PrefillPace = field(default_factory=PrefillPace)  # its measured prompt speed
    # The user whose request loaded it (None: the system). Only they (or staff) may unload it, or change its
    # keep-alive: another user's keep_alive=0 would otherwise be an unload by the back door.
    loaded_by: int | None = None
    # An Unload asked while it was generating: done when its last generation ends (answers are batched, so
    # the Unload task runs beside them instead of after them).
    unload_when_idle: bool = False

    @property
    def snapshot_id(self) -> int:
        return self.spec.snapshot_id

    @property
    def expires_at(self) -> float | None:
        return None if self.keep_alive is None else self.last_used + self.keep_alive

    def status(self, now: float) -> dict[str, Any]:
        return {
            "snapshot_id": self.spec.snapshot_id,
            "repo_id": self.spec.repo_id,
            "memory_bytes": self.nbytes,
            "context_length": self.context_length,
            "loaded_at": self.loaded_at,
            "idle_seconds": 0.0 if self.busy else round(max(0.0, now - self.last_used), 1),
            "expires_at": self.expires_at,
            "busy": bool(self.busy),
            "loaded_by": self.loaded_by,
        }


def context_length_of(config: dict[str, Any], tokenizer: Any) -> int:
    """The config's window (the same reading the pull and the cache import record), else the tokenizer's."""
    if (stated := context_length(config)) is not None:
        return stated
    # Tokenizers without a limit report a huge sentinel (1e30): not a real window.
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**7:
        return value
    return DEFAULT_CONTEXT_LENGTH


def cast_to_float32(model: Any) -> None:
    """Half-precision parameters (typically the scales and biases of a quantized model) run 8-30x slower
    on MLX's CPU backend than float32 (measured, shared/models/README.md); quantized weights are integers
    and stay as they are."""

    def cast(value: mx.array) -> mx.array:
        if (
            isinstance(value, mx.array)
            and mx.issubdtype(value.dtype, mx.floating)
            and value.dtype != mx.float32
        ):
            return value.astype(mx.float32)
        return value

    model.update(tree_map(cast, model.parameters()))
    mx.eval(model.parameters())


def parameter_bytes(model: Any) -> int:
    return sum(value.nbytes for _, value in tree_flatten(model.parameters()))


def estimate_bytes(path: Path, *, cast_float32: bool) -> int:
    """What loading will take, from the files, before loading: the budget check must come first."""
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if cast_float32:
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            config = {}
        if "quantization" not in config and config.get("torch_dtype") in _HALF:
            size *= 2  # every weight doubles; a quantized model only grows its (small) scales
    return size


class ModelRegistry:
    def __init__(
        self,
        *,
        max_models: int,
        memory_budget: int,
        keep_alive: float | None,
        cast_float32: bool,
        loader: Callable[..., Any] = mlx_lm.load,
    ) -> None:
        self.max_models = max_models
        self.memory_budget = memory_budget
        self.default_keep_alive = keep_alive
        self.cast_float32 = cast_float32
        self._loader = loader
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()  # least recently used first
        # Held for dict changes only: the presence thread reads status() while the worker generates.
        self._lock = threading.Lock()
        self._unload_listeners: list[Callable[[int], None]] = []

    # --- Queries ---------------------------------------------------------------------------------------------

    def __contains__(self, snapshot_id: int) -> bool:
        return snapshot_id in self._models

    def __len__(self) -> int:
        return len(self._models)

    def loaded_ids(self) -> list[int]:
        with self._lock:
            return list(self._models)

    def memory_used(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._models.values())

    def status(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._lock:
            return [m.status(now) for m in reversed(self._models.values())]  # most recent first

    def on_unload(self, listener: Callable[[int], None]) -> None:
        """Called with the snapshot id after a model leaves memory (the prompt cache drops its entries)."""
        self._unload_listeners.append(listener)

    # --- Loading and use -------------------------------------------------------------------------------------

    def get(
        self, spec: ModelSpec, *, keep_alive: float | EllipsisType | None = ..., user_id: int | None = None
    ) -> LoadedModel:
        """The loaded model for spec, loading it (and evicting others) if needed, for `user_id`. keep_alive:
        seconds, None for forever, or ... (Ellipsis) for the default; it applies to a model this user loaded
        (or the system did), not to another user's. Raises ModelLoadError."""
        with self._lock:
            entry = self._models.get(spec.snapshot_id)
            if entry is not None:
                self._models.move_to_end(spec.snapshot_id)
        if entry is not None and entry.spec.path != spec.path and self.unload(spec.snapshot_id):
            entry = None  # the snapshot row now points elsewhere: reload from the new path
        if entry is None:
            entry = self._load(spec)
            entry.loaded_by = user_id
        entry.last_used = time.time()
        if entry.loaded_by is None or entry.loaded_by == user_id:
            entry.keep_alive = self.default_keep_alive if keep_alive is ... else keep_alive
        return entry

    @contextlib.contextmanager
    def use(
        self, spec: ModelSpec, *, keep_alive: float | EllipsisType | None = ..., user_id: int | None = None
    ) -> Iterator[LoadedModel]:
        """Hold a model for one generation: never evicted (nor unloaded) while in use; keep-alive counts from
        the end."""
        entry = self.acquire(spec, keep_alive=keep_alive, user_id=user_id)
        try:
            yield entry
        finally:
            self.release(entry)

    def acquire(
        self, spec: ModelSpec, *, keep_alive: float | EllipsisType | None = ..., user_id: int | None = None
    ) -> LoadedModel:
        """`use` in two calls, for a generation that ends in a later step of the engine's loop: the model is
        held (never evicted nor unloaded) until `release`."""
        entry = self.get(spec, keep_alive=keep_alive, user_id=user_id)
        entry.busy += 1
        return entry

    def release(self, entry: LoadedModel) -> None:
        entry.busy -= 1
        entry.last_used = time.time()
        if (entry.keep_alive == 0 or entry.unload_when_idle) and not entry.busy:
            self.unload(entry.spec.snapshot_id)

    def _load(self, spec: ModelSpec) -> LoadedModel:
        path = Path(spec.path)
        # mlx_lm.load treats a path that does not exist as a Hub repo id and downloads it: never let it.
        if not path.is_absolute() or not path.is_dir():
            raise ModelLoadError(f"The files of {spec.repo_id} are missing on this machine ({path}).")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec.repo_id} has no config.json: it is not a model mlx-lm can load.")
        estimate = estimate_bytes(path, cast_float32=self.cast_float32)
        if estimate > self.memory_budget:
            raise ModelLoadError(
                f"{spec.repo_id} needs about {estimate / 2**30:.1f} GiB, more than the inference memory "
                f"budget ({self.memory_budget / 2**30:.1f} GiB, INFERENCE_MEMORY_BUDGET)."
            )
        self._make_room(estimate)
        started = time.perf_counter()
        try:
            model, tokenizer, config = self._loader(str(path), return_config=True)
            if self.cast_float32:
                cast_to_float32(model)
        except Exception as exc:  # anything mlx-lm raises on a broken model: the user's problem, say it
            log.warning("loading %s from %s failed", spec.repo_id, path, exc_info=True)
            mx.clear_cache()
            raise ModelLoadError(f"{spec.repo_id} could not be loaded: {type(exc).__name__}: {exc}") from exc
        entry = LoadedModel(
            spec=spec,
            model=model,
            tokenizer=tokenizer,
            config=config,
            context_length=context_length_of(config, tokenizer),
            nbytes=parameter_bytes(model),
            load_seconds=time.perf_counter() - started,
            keep_alive=self.default_keep_alive,
        )
        with self._lock:
            self._models[spec.snapshot_id] = entry
        # The estimate was from the files; now that the real size is known, enforce the budget again.
        self._make_room(0, keep=spec.snapshot_id)
        log.info("loaded %s (%.0f MB) in %.2f s", spec.repo_id, entry.nbytes / 1e6, entry.load_seconds)
        return entry

    def _make_room(self, incoming: int, *, keep: int | None = None) -> None:
        """Evict least recently used idle models until one more fits (count and memory)."""
        while True:
            with self._lock:
                count = len(self._models) + (1 if incoming else 0)
                used = sum(m.nbytes for m in self._models.values()) + incoming
                if count <= self.max_models and used <= self.memory_budget:
                    return
                victim = next(
                    (sid for sid, m in self._models.items() if not m.busy and sid != keep),
                    None,
                )
            if victim is None:
                return  # everything left is in use: go over rather than fail a running generation
            log.info("evicting snapshot %s to make room", victim)
            self.unload(victim)

    # --- Unloading -------------------------------------------------------------------------------------------

    def unload(self, snapshot_id: int, *, by_user: int | None = None) -> bool:
        """Unload unless it is generating. `by_user`: a non-staff user's id, who may unload only a model they
        loaded (None: staff or the system, who may unload any idle model)."""
        with self._lock:
            entry = self._models.get(snapshot_id)
            if entry is None or entry.busy:
                return False
            if by_user is not None and entry.loaded_by != by_user:
                log.info(
                    "user %s may not unload snapshot %s (loaded by %s)", by_user, snapshot_id, entry.loaded_by
                )
                return False
            del self._models[snapshot_id]
        self._after_unload(snapshot_id)
        return True

    def unload_after_use(self, snapshot_id: int, *, by_user: int | None = None) -> bool:
        """The Unload button: unload now if idle, else once its running answers end (never cutting one).
        Returns whether it was unloaded now."""
        if self.unload(snapshot_id, by_user=by_user):
            return True
        with self._lock:
            entry = self._models.get(snapshot_id)
            if entry is not None and entry.busy and (by_user is None or entry.loaded_by == by_user):
                entry.unload_when_idle = True
        return False

    def _after_unload(self, snapshot_id: int) -> None:
        for listener in self._unload_listeners:
            listener(snapshot_id)
        # Drop the last references before returning MLX's buffer cache to the system.
        gc.collect()
        mx.clear_cache()

    def expire_idle(self, now: float | None = None) -> list[int]:
        """Unload models whose keep-alive ran out. Returns their snapshot ids."""
        now = time.time() if now is None else now
        with self._lock:
            expired = [
                sid
                for sid, m in self._models.items()
                if not m.busy and m.expires_at is not None and m.expires_at <= now
            ]
        return [sid for sid in expired if self.unload(sid)]

    def clear(self) -> None:
        for sid in self.loaded_ids():
            self.unload(sid)
