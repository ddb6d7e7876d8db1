"""What a worker tells the cluster about its machine with each heartbeat: memory, and for a worker that
writes the cache (downloads/maintenance) the free and total disk of every cache root. Read in the worker
every few seconds, so cheap: a statvfs per root and one read of the kernel's memory figures, no subprocess."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings

# Share of the machine's memory used for models when INFERENCE_MEMORY_BUDGET is unset (as the inference
# worker's registry does).
DEFAULT_BUDGET_SHARE = 0.6
# Queues whose worker writes this machine's cache: it publishes the disk it would write to.
CACHE_QUEUES = ("downloads", "maintenance")
CACHE_QUEUE_PREFIX = "node."


def physical_memory() -> int:
    """Bytes of RAM (unified memory on Apple silicon); 0 when the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def available_memory() -> int:
    """Bytes the OS could give a new process now without swapping; 0 when unknown."""
    try:
        import psutil  # optional: present with most installs, and the only portable reading on macOS
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_budget(total: int) -> int:
    """The bytes the inference worker of a machine with `total` bytes keeps models in (its verdicts' budget)."""
    return settings.INFERENCE_MEMORY_BUDGET or int(total * DEFAULT_BUDGET_SHARE)


def memory() -> dict[str, int]:
    total = physical_memory()
    return {"total": total, "available": available_memory(), "budget": memory_budget(total)}


def disk(root: Path) -> dict[str, int]:
    """Free and total bytes of the filesystem a cache root is (or will be, before the first pull) on."""
    probe = Path(root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = os.statvfs(probe)
    return {"free": stat.f_bavail * stat.f_frsize, "total": stat.f_blocks * stat.f_frsize}


def writes_cache(queues: list[str]) -> bool:
    return any(q in CACHE_QUEUES or q.startswith(CACHE_QUEUE_PREFIX) for q in queues)


def facts(queues: list[str]) -> dict[str, Any]:
    """{"memory": {total, available, budget}, "disk": {root name: {free, total}}}: disk only from a worker
    that writes the cache (the inference worker's disk would say nothing a pull could use)."""
    result: dict[str, Any] = {"memory": memory()}
    if writes_cache(queues):
        roots: dict[str, dict[str, int]] = {}
        for name, root in settings.CACHE_ROOTS.items():
            try:
                roots[name] = disk(root)
            except OSError:  # an unmounted volume: that root has no room, the others still count
                roots[name] = {"free": 0, "total": 0}
        result["disk"] = roots
    return result
