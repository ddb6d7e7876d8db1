"""The system's health, as one dict: the health page, /healthz and the overview all read this.

`system_health()` is the whole picture, for staff. `health_for(user)` is what one viewer may see: anonymous
callers (load balancers) get ok / not ok per component; a signed-in user also gets latencies, worker counts,
disk space and the loaded models they may see; cache paths, worker names, error texts and library versions
are for staff only (they map the machine for an attacker)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import time
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from models_app.services import nodes, workers
from models_app.services import redis as app_redis

QUEUES = ("downloads", "maintenance", "inference")
# What a loaded model's entry shows a user who may see the model (who loaded it is for staff).
PUBLIC_MODEL_FIELDS = ("snapshot_id", "repo_id", "memory_bytes", "context_length", "idle_seconds", "busy")
# What a machine's entry shows a signed-in user (its worker names are for staff).
PUBLIC_NODE_FIELDS = ("name", "state", "last_seen", "this", "can_download", "can_infer", "disk", "memory")


def _timed(check) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    try:
        detail = check() or {}
        ok = True
        error = ""
    except Exception as exc:  # every failure becomes a red line, never a 500
        detail, ok, error = {}, False, f"{type(exc).__name__}: {exc}"
    return {
        "ok": ok,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "error": error,
        **detail,
    }


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def _redis() -> dict[str, Any]:
    app_redis.client().ping()
    return {}


def disk_usage(path: Path) -> dict[str, int]:
    """Usage of the filesystem holding `path` (or its nearest existing parent: the cache may not exist yet)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"total": usage.total, "used": usage.used, "free": usage.free}


def _writable(path: Path) -> bool:
    """A download can write there: the root, or the nearest parent it would be created in (before the first
    pull the cache folder need not exist)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def system_health() -> dict[str, Any]:
    database = _timed(_database)
    redis_check = _timed(_redis)
    queues: dict[str, list[dict[str, Any]]] = {q: [] for q in QUEUES}
    mlx_backends: list[dict[str, Any]] = []
    if redis_check["ok"]:
        try:
            for info in workers.live_workers():
                entry = {
                    "name": info.hostname,
                    "host": info.host,
                    "last_seen": info.last_seen,
                    "age_s": round(info.age, 1),
                }
                for q in info.queues:
                    queues.setdefault(q, []).append(entry)
                if "mlx" in info.extra:
                    loaded = info.extra.get("loaded_models", [])
                    mlx_backends.append(
                        {"worker": info.hostname, **info.extra["mlx"], "loaded_models": loaded}
                    )
        except redis.RedisError as exc:
            redis_check = {**redis_check, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    caches = []
    for name, root in settings.CACHE_ROOTS.items():
        caches.append(
            {
                "name": name,
                "ok": _writable(root),
                "path": str(root),
                "exists": root.exists(),
                "disk": disk_usage(root),
            }
        )
    queue_status = {q: {"ok": bool(ws), "worker_count": len(ws), "workers": ws} for q, ws in queues.items()}
    try:
        cluster = [n.as_json() for n in nodes.cluster()]
    except Exception as exc:  # the database answered above or it is red already: never a 500 here
        cluster = []
        database = {**database, "ok": False, "error": database["error"] or f"{type(exc).__name__}: {exc}"}
    ok = database["ok"] and redis_check["ok"] and all(s["ok"] for s in queue_status.values())
    return {
        "ok": ok,
        "node": settings.NODE_NAME,
        "database": database,
        "redis": redis_check,
        "queues": queue_status,
        "mlx": {
            "version": _version("mlx"),
            "mlx_lm_version": _version("mlx-lm"),
            "workers": mlx_backends,
            "ok": bool(mlx_backends),
        },
        "cache": caches,
        # Every machine: up (a worker of it beats) or down (remembered, no worker beats). A down machine
        # does not make this report red: the others still serve (its snapshots are unavailable meanwhile).
        "nodes": cluster,
        "versions": {"huggingface_hub": _version("huggingface-hub"), "django": _version("django")},
    }


def _component(check: dict[str, Any], *keep: str) -> dict[str, Any]:
    return {"ok": check["ok"], **{k: check[k] for k in keep if k in check}}


def _caches(report: dict[str, Any], *, disk: bool) -> list[dict[str, Any]]:
    return [
        {"name": c["name"], "ok": c["ok"], **({"disk": c["disk"]} if disk else {})} for c in report["cache"]
    ]


def health_for(user: Any, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """`report` (default: a fresh system_health()) cut down to what `user` may see."""
    from models_app.services import inference

    report = report if report is not None else system_health()
    if user is not None and user.is_authenticated and user.is_staff:
        for backend in report["mlx"]["workers"]:
            backend["loaded_models"] = [{**m, "can_unload": True} for m in backend.get("loaded_models", [])]
        return report
    summary: dict[str, Any] = {
        "ok": report["ok"],
        "database": _component(report["database"]),
        "redis": _component(report["redis"]),
        "queues": {q: _component(s) for q, s in report["queues"].items()},
        "mlx": _component(report["mlx"]),
        "cache": _caches(report, disk=False),
        # Counts only: machine names map the cluster.
        "nodes": {
            "up": sum(1 for n in report["nodes"] if n["state"] == nodes.UP),
            "down": sum(1 for n in report["nodes"] if n["state"] == nodes.DOWN),
        },
    }
    if user is None or not user.is_authenticated:
        return summary
    summary["database"] = _component(report["database"], "vendor", "latency_ms")
    summary["redis"] = _component(report["redis"], "latency_ms")
    summary["queues"] = {q: _component(s, "worker_count") for q, s in report["queues"].items()}
    summary["cache"] = _caches(report, disk=True)
    visible = inference.visible_loaded(
        user,
        [m for b in report["mlx"]["workers"] for m in b["loaded_models"]]
        + [m for n in report["nodes"] for m in n["loaded_models"]],
    )
    summary["nodes"] = [
        {k: n[k] for k in PUBLIC_NODE_FIELDS}
        | {
            "loaded_models": [
                {k: m[k] for k in PUBLIC_MODEL_FIELDS if k in m}
                for m in n["loaded_models"]
                if m.get("snapshot_id") in visible
            ]
        }
        for n in report["nodes"]
    ]
    summary["mlx"] = {
        "ok": report["mlx"]["ok"],
        "workers": [
            {
                "device": b.get("device", ""),
                "memory_limit": b.get("memory_limit", 0),
                "loaded_models": [
                    {k: m[k] for k in PUBLIC_MODEL_FIELDS if k in m}
                    | {"can_unload": inference.may_unload(user, m)}
                    for m in b["loaded_models"]
                    if m["snapshot_id"] in visible
                ],
            }
            for b in report["mlx"]["workers"]
        ],
    }
    return summary
