"""Loaded models for the pages, as the inference workers' heartbeats report them (inference service: Redis
only, no MLX in the web process), filtered to the snapshots the user may see (one query)."""

from __future__ import annotations

from typing import Any

from models_app.selectors.snapshots import snapshot_list
from models_app.services import inference


def loaded_models(user) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """[{snapshot_id, repo_id, memory_bytes, idle_seconds, busy, worker, snapshot, can_unload}] the user may
    see."""
    reported = inference.loaded_models()
    if not reported:
        return []
    visible = snapshot_list(user=user, include_deleted=True).in_bulk(list(reported))
    return [
        {**m, "snapshot": visible[sid], "can_unload": inference.may_unload(user, m)}
        for sid, m in reported.items()
        if sid in visible
    ]


def loaded_ids() -> set[int]:
    return set(inference.loaded_models())
