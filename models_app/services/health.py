"""The system's health, as one dict: the health page, /healthz and the overview all read this."""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection

from models_app.services import redis as app_redis
from models_app.services import workers

QUEUES = ("downloads", "maintenance", "inference")


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
        caches.append({"name": name, "path": str(root), "exists": root.exists(), "disk": disk_usage(root)})
    queue_status = {q: {"ok": bool(ws), "workers": ws} for q, ws in queues.items()}
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
        "versions": {"huggingface_hub": _version("huggingface-hub"), "django": _version("django")},
    }
