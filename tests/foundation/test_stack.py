"""The product started the way `make run` starts it: one command, every process, then Ctrl-C."""

from __future__ import annotations

import signal
import sys

import pytest

from tests.support.processes import ManagedProcess, get_json, wait_for
from tests.support.redis_server import answers, free_port


@pytest.mark.parametrize("own_redis", [False, True], ids=["configured-redis", "starts-its-own-redis"])
@pytest.mark.django_db(transaction=True)
def test_runstack_serves_a_green_healthz_and_stops_everything_on_ctrl_c(  # type: ignore[no-untyped-def]
    stack_env, process_log_dir, tmp_path, own_redis: bool
) -> None:
    port = free_port()
    # A prefix of its own, so this stack's workers are not mistaken for the session's test workers.
    env = {**stack_env, "REDIS_PREFIX": f"{stack_env.get('REDIS_PREFIX', 'mlxcr-test')}-stack"}
    redis_port = free_port()
    if own_redis:
        # As on a fresh laptop: product settings, no REDIS_URL, nothing answering on the Redis port.
        for name in ("REDIS_URL", "TEST_REDIS_URL"):
            env.pop(name, None)
        env.update(
            DJANGO_SETTINGS_MODULE="dashboard.settings",
            LOCAL_REDIS_PORT=str(redis_port),
            VAR_DIR=str(tmp_path / "var"),
            DEV_SECRETS="1",
        )
    stack = ManagedProcess(
        [sys.executable, "manage.py", "runstack", "--port", str(port), "--downloads-concurrency", "1"],
        env,
        process_log_dir / "runstack.log",
    )
    try:
        report: dict = {}

        def healthy() -> bool:
            nonlocal report
            if not stack.alive():
                raise AssertionError(f"runstack exited:\n{stack.log()[-4000:]}")
            try:
                status, report = get_json(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except OSError:
                return False
            return status == 200

        wait_for(healthy, 90, f"stack never became healthy:\n{stack.log()[-4000:]}", interval=0.5)
        assert report["ok"] is True
        assert all(report["queues"][q]["ok"] for q in ("downloads", "maintenance", "inference"))
        assert f"open http://127.0.0.1:{port}/" in stack.log()
        children = stack.children()
        assert len(children) == (5 if own_redis else 4)  # web, two workers, beat (+ Redis)
        if own_redis:
            assert answers(f"redis://127.0.0.1:{redis_port}/0")
            assert f"started redis-server on 127.0.0.1:{redis_port}" in stack.log()

        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(30) == 0
        assert "stopped." in stack.log()
        for pid in children:
            wait_for(lambda pid=pid: not _alive(pid), 15, f"child {pid} still running after Ctrl-C")
        if own_redis:
            assert not answers(f"redis://127.0.0.1:{redis_port}/0")
    finally:
        stack.stop()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
