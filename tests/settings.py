"""Test settings: the product's settings with a private Redis, an isolated var/ and key prefix per pytest-xdist
worker. Imported by pytest (DJANGO_SETTINGS_MODULE) and by the worker and server subprocesses the tests start,
which inherit TEST_REDIS_URL and PYTEST_XDIST_WORKER from the environment."""

from __future__ import annotations

import atexit
import os
from pathlib import Path

_BASE = Path(__file__).resolve().parent.parent
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# Absolute: redis-server resolves its --logfile after changing into --dir.
_TEST_VAR = Path(os.environ.get("TEST_VAR_DIR", str(_BASE / "var" / "test"))).resolve()

_PER_WORKER = {
    "DEV_SECRETS": "1",
    "VAR_DIR": str(_TEST_VAR / _WORKER),
    "REDIS_PREFIX": f"mlxcr-test-{_WORKER}",
    "HF_HUB_CACHE": str(_TEST_VAR / _WORKER / "hf-cache"),
    "DOWNLOAD_DISK_RESERVE": "1MB",
    # The local Hub's Xet mode serves a local CAS directory (off in the product: see dashboard/settings.py).
    "HUB_XET_LOCAL_CAS": "1",
}
if os.environ.get("MLXCR_TEST_WORKER") == _WORKER:
    # A subprocess a test started (worker, server): keep what the test chose for it.
    for _name, _value in _PER_WORKER.items():
        os.environ.setdefault(_name, _value)
else:
    # The pytest controller or an xdist worker: values inherited from the controller are not ours.
    os.environ.update(_PER_WORKER)
    os.environ["MLXCR_TEST_WORKER"] = _WORKER

if "TEST_REDIS_URL" not in os.environ:
    # The first process of a test run starts one redis-server; xdist workers and subprocesses inherit its URL.
    from devkit.redis_server import RedisServer

    _redis = RedisServer(_TEST_VAR / "redis").start()
    os.environ["TEST_REDIS_URL"] = _redis.url
    atexit.register(_redis.stop)
os.environ["REDIS_URL"] = os.environ["TEST_REDIS_URL"]

# The inference worker's slots: as many as one user may have in flight, so the queueing tests can fill them
# all with one user's long answers (tests/api/test_inflight.py `worker_busy`).
os.environ.setdefault("INFERENCE_SLOTS", "4")

from dashboard.settings import *  # noqa: E402,F403

# Fast password hashing: tests create many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
