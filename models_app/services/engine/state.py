"""The inference worker's process state: one model registry and one prompt cache, built from settings on
first use, and what the worker does with them outside a generation (Load/Unload buttons, the keep-alive
beat, the status its heartbeat publishes)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx_lm
from django.conf import settings
from django.db import connection

from models_app.models import Repository, Snapshot
from models_app.services import inference, model_markers
from models_app.services.engine.prompt_cache import PromptCache
from models_app.services.engine.registry import ModelLoadError, ModelRegistry, ModelSpec
from models_app.services.plan import memory_budget, physical_memory


@dataclass
class EngineState:
    registry: ModelRegistry
    prompt_cache: PromptCache
    hostname: str = field(default_factory=socket.gethostname)
    busy_since: float | None = None  # since when at least one request has been in the worker
    in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self) -> None:
        """A request entered the worker (its task threads run several at once)."""
        with self._lock:
            self.in_flight += 1
            if self.busy_since is None:
                self.busy_since = time.time()

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if self.in_flight <= 0:
                self.in_flight, self.busy_since = 0, None


_state: EngineState | None = None
_state_lock = threading.Lock()


def state() -> EngineState:
    global _state
    with _state_lock:
        if _state is None:
            registry = ModelRegistry(
                max_models=settings.INFERENCE_MAX_MODELS,
                # The machine's memory unknown: budget as if it had 8 GiB rather than refuse every model.
                memory_budget=memory_budget(physical_memory() or 8 * 2**30),
                keep_alive=float(settings.INFERENCE_KEEP_ALIVE)
                if settings.INFERENCE_KEEP_ALIVE >= 0
                else None,
                cast_float32=settings.INFERENCE_CAST_FLOAT32,
            )
            prompt_cache = PromptCache(
                max_entries=settings.PROMPT_CACHE_ENTRIES, max_bytes=settings.PROMPT_CACHE_BYTES
            )
            registry.on_unload(prompt_cache.drop_snapshot)
            _state = EngineState(registry=registry, prompt_cache=prompt_cache)
        return _state


def reset_state() -> None:
    """Forget every loaded model and cache (tests; settings changed)."""
    global _state
    with _state_lock:
        old, _state = _state, None
    if old is not None:
        old.prompt_cache.clear()
        old.registry.clear()


# The snapshot row's checked columns, as one plain statement: every request reads it on its way to the first
# token, and the ORM's query building cost 0.6-0.8 ms of CPU there (its code runs cold between generations),
# the statement itself under 0.2 ms. Its tables and columns are the models' own (Snapshot, Repository).
_SPEC_SQL = (
    "SELECT s.status, s.node, s.path, s.markers IS NULL, r.repo_id FROM {snapshot} s "
    "JOIN {repository} r ON r.id = s.repository_id WHERE s.id = %s"
)


def _spec_row(snapshot_id: int) -> tuple[str, str, str, bool, str] | None:
    """(status, node, path, markers missing, repo id) of a snapshot, or None."""
    quote = connection.ops.quote_name
    sql = _SPEC_SQL.format(
        snapshot=quote(Snapshot._meta.db_table), repository=quote(Repository._meta.db_table)
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [snapshot_id])
        return cursor.fetchone()


def spec_for(snapshot_id: int) -> ModelSpec:
    """The snapshot row, checked: only a ready snapshot on this node is ever loaded, from its stored path."""
    row = _spec_row(snapshot_id)
    if row is None:
        raise ModelLoadError("This model is no longer registered.")
    status, node, path, markers_missing, name = row
    if status != Snapshot.Status.READY:
        raise ModelLoadError(f"{name} is not ready ({Snapshot.Status(status).label.lower()}).")
    if node != settings.NODE_NAME:
        raise ModelLoadError(f"{name} is on node {node}, not on this one ({settings.NODE_NAME}).")
    if markers_missing:
        # A row older than its markers, on the machine that has the files: the API reads them from the row.
        with contextlib.suppress(Exception):
            model_markers.fill_markers(Snapshot.objects.select_related("repository").get(id=snapshot_id))
    return ModelSpec(snapshot_id=snapshot_id, repo_id=name, path=path)


def load_model(snapshot_id: int, *, keep_alive: Any = None, user_id: int | None = None) -> dict[str, Any]:
    """Load a model now (the Load button) for `user_id`; returns its status entry. Raises ModelLoadError."""
    from models_app.services.engine.batch import engine_loop

    ttl = ... if keep_alive in (None, "") else inference.parse_keep_alive(keep_alive)
    spec = spec_for(snapshot_id)
    # On the engine's loop thread, which owns MLX and the registry, between two generation steps.
    entry = engine_loop().call(lambda: state().registry.get(spec, keep_alive=ttl, user_id=user_id))
    entry.unload_when_idle = False  # Load after Unload: the later wish wins
    return entry.status(time.time())


def unload_model(snapshot_id: int, *, by_user: int | None = None) -> bool:
    from models_app.services.engine.batch import engine_loop

    return engine_loop().call(lambda: state().registry.unload_after_use(snapshot_id, by_user=by_user))


def expire_idle() -> list[int]:
    from models_app.services.engine.batch import engine_loop

    return engine_loop().call(lambda: state().registry.expire_idle())


def worker_status() -> dict[str, Any]:
    """Read by the presence thread every few seconds: Python state only, no MLX call (the main thread may be
    in the middle of a generation)."""
    engine = state()
    return {
        "mlx": {
            "device": str(mx.default_device()),
            "version": mx.__version__,
            "mlx_lm_version": mlx_lm.__version__,
            "memory_limit": engine.registry.memory_budget,
            "memory_used": engine.registry.memory_used(),
            "float32_cast": engine.registry.cast_float32,
        },
        "loaded_models": engine.registry.status(),
        "prompt_cache": {"entries": len(engine.prompt_cache), "bytes": engine.prompt_cache.nbytes},
        "busy_since": engine.busy_since,
    }
