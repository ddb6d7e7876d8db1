"""The product started the way `make run` starts it: one command, every process, then Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from django.conf import global_settings, settings
from django.contrib.auth import get_user_model
from django.test import override_settings

from dashboard.stack import Service, Stack
from dashboard.welcome import lan_address
from devkit.processes import ROOT, ManagedProcess, get_json, wait_for
from devkit.redis_server import answers, free_port

pytestmark = pytest.mark.processes  # runs runstack and its children

LOGIN_BOX = re.compile(r"#{20,}\n#\s+#\n#  MLX Control Room is up: open (\S+)\s*#\n(?:.*\n)*?#{20,}\n")
PASSWORD = re.compile(r"#\s+password: (\S+)\s+#")


def _path_without(tmp_path: Path, program: str) -> str:
    """A PATH that finds every program the machine's PATH finds, except `program`: as on a machine where it
    was never installed (the machine's own copy, and any server using it, stay untouched)."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            target = os.path.join(directory, entry)
            if entry != program and not (shadow / entry).exists() and os.access(target, os.X_OK):
                (shadow / entry).symlink_to(target)
    return str(shadow)


def _runstack(
    stack_env: dict[str, str],
    tmp_path: Path,
    log_dir: Path,
    redis: str,
    *extra_args: str,
    **extra_env: str,
) -> tuple[ManagedProcess, int, dict[str, str]]:
    port = free_port()
    log = log_dir / f"runstack-{redis}-{port}.log"  # the log directory outlives a test run
    # A prefix of its own, so this stack's workers are not mistaken for the session's test workers.
    env = {**stack_env, "REDIS_PREFIX": f"{stack_env.get('REDIS_PREFIX', 'mlxcr-test')}-stack"}
    if redis != "configured":
        # As on a fresh laptop: product settings, no REDIS_URL, nothing answering on the Redis port.
        for name in ("REDIS_URL", "TEST_REDIS_URL"):
            env.pop(name, None)
        env.update(
            DJANGO_SETTINGS_MODULE="dashboard.settings",
            LOCAL_REDIS_PORT=str(free_port()),
            VAR_DIR=str(tmp_path / "var"),
            DEV_SECRETS="1",
        )
    if redis == "embedded":
        env["PATH"] = _path_without(tmp_path, "redis-server")
    env.update(extra_env)
    process = ManagedProcess(
        [
            sys.executable,
            "manage.py",
            "runstack",
            "--port",
            str(port),
            "--downloads-concurrency",
            "1",
            *extra_args,
        ],
        env,
        log,
    )
    return process, port, env


def _wait_healthy(stack: ManagedProcess, port: int) -> dict:
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

    wait_for(healthy, 120, f"stack never became healthy:\n{stack.log()[-4000:]}", interval=0.5)
    return report


@pytest.mark.parametrize(
    "redis",
    ["configured", "own", "embedded"],
    ids=["configured-redis", "starts-its-own-redis", "embedded-redis"],
)
@pytest.mark.django_db(transaction=True)
def test_runstack_serves_a_green_healthz_shows_the_login_last_and_stops_everything_on_ctrl_c(  # type: ignore[no-untyped-def]
    stack_env, process_log_dir, tmp_path, redis: str
) -> None:
    stack, port, env = _runstack(stack_env, tmp_path, process_log_dir, redis)
    try:
        report = _wait_healthy(stack, port)
        assert report["ok"] is True
        assert all(report["queues"][q]["ok"] for q in ("downloads", "maintenance", "inference"))
        children = stack.children()
        assert len(children) == (4 if redis == "configured" else 5)  # web, two workers, beat (+ Redis)
        if redis != "configured":
            redis_url = f"redis://127.0.0.1:{env['LOCAL_REDIS_PORT']}/0"
            assert answers(redis_url)
            server = "redis-server" if redis == "own" else "valkey-server (embedded"
            assert f"started {server}" in stack.log()
            assert f"on 127.0.0.1:{env['LOCAL_REDIS_PORT']}" in stack.log()

        # The first run's login comes last, once the stack answers: after both workers said they were ready.
        wait_for(lambda: LOGIN_BOX.search(stack.log()), 120, f"no login box:\n{stack.log()[-4000:]}", 0.5)
        log = stack.log()
        box = LOGIN_BOX.search(log)
        assert box is not None and box.group(1) == f"http://127.0.0.1:{port}/"
        for worker in ("downloads", "inference"):
            ready = _ready_line(worker).search(log)
            assert ready is not None and ready.start() < box.start(), worker
        password = PASSWORD.search(box.group(0))
        assert password is not None
        admin = get_user_model().objects.get(username="admin")
        # The stack may run the product's settings, whose hashers the test settings leave out for speed.
        with override_settings(
            PASSWORD_HASHERS=[*global_settings.PASSWORD_HASHERS, *settings.PASSWORD_HASHERS]
        ):
            assert admin.is_superuser and admin.check_password(password.group(1))
        assert log.count(password.group(1)) == 1  # shown once, and never by a child
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert password.group(1).encode() not in path.read_bytes(), path

        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(30) == 0
        assert "stopped." in stack.log()
        for pid in children:
            wait_for(lambda pid=pid: not _alive(pid), 15, f"child {pid} still running after Ctrl-C")
        if redis != "configured":
            assert not answers(redis_url)
    finally:
        stack.stop()


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_is_restarted_while_the_web_keeps_answering(  # type: ignore[no-untyped-def]
    stack_env, process_log_dir, tmp_path
) -> None:
    stack, port, _ = _runstack(stack_env, tmp_path, process_log_dir, "configured")
    try:
        _wait_healthy(stack, port)
        web = _child(stack, "uvicorn")
        downloads = _child(stack, "downloads@")
        pool = _children_of(downloads)
        assert pool, "the downloads worker has no prefork pool child"
        ready_before = len(_ready_line("downloads").findall(stack.log()))

        os.kill(downloads, signal.SIGKILL)  # as the issue did: the worker's main process, not the stack

        def restarted() -> bool:
            assert stack.alive(), f"runstack exited:\n{stack.log()[-4000:]}"
            # The web server answers the whole time (200 or 503 while the worker is away, never a refusal).
            status, _ = get_json(f"http://127.0.0.1:{port}/healthz", timeout=10)
            assert status in (200, 503)
            return "downloads restarted" in stack.log()

        wait_for(restarted, 60, f"the downloads worker was not restarted:\n{stack.log()[-4000:]}", 0.5)
        assert "downloads exited with code -9" in stack.log()
        new = _child(stack, "downloads@")
        assert new != downloads
        assert _child(stack, "uvicorn") == web  # nothing else was restarted
        for pid in pool:  # the dead worker's pool does not linger beside the new one
            wait_for(lambda pid=pid: not _alive(pid), 15, f"pool child {pid} outlived its worker")
        # The new worker takes the queues again (its own "ready." line) and the stack is green.
        wait_for(
            lambda: len(_ready_line("downloads").findall(stack.log())) > ready_before,
            120,
            f"the new downloads worker never got ready:\n{stack.log()[-4000:]}",
            0.5,
        )
        report = _wait_healthy(stack, port)
        assert report["queues"]["downloads"]["ok"]

        children = stack.children()
        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(30) == 0
        for pid in [*children, *_children_of(new)]:
            wait_for(lambda pid=pid: not _alive(pid), 15, f"child {pid} still running after Ctrl-C")
    finally:
        stack.stop()


@pytest.mark.django_db(transaction=True)
def test_a_killed_private_redis_is_restarted_and_the_stack_reconnects(  # type: ignore[no-untyped-def]
    stack_env, process_log_dir, tmp_path
) -> None:
    stack, port, env = _runstack(stack_env, tmp_path, process_log_dir, "own")
    try:
        _wait_healthy(stack, port)
        server = _child(stack, "redis-server")
        killed_at = time.time()
        os.kill(server, signal.SIGKILL)
        wait_for(
            lambda: "redis restarted" in stack.log(),
            60,
            f"Redis was not restarted:\n{stack.log()[-4000:]}",
            0.5,
        )
        assert "redis exited with code -9" in stack.log()
        redis_url = f"redis://127.0.0.1:{env['LOCAL_REDIS_PORT']}/0"
        wait_for(lambda: answers(redis_url), 30, "the restarted Redis does not answer", 0.25)

        # Workers and the web server reconnect by themselves: every queue has a worker that has announced itself
        # to the new server (not a presence key the snapshot brought back).
        # Anonymous /healthz says only ok per queue: the presence keys themselves are read from that Redis.
        def fresh() -> bool:
            status, _ = get_json(f"http://127.0.0.1:{port}/healthz", timeout=10)
            client = redis.Redis.from_url(redis_url)
            try:
                beats = [json.loads(client.get(key) or "{}") for key in client.scan_iter("*workers:*")]
            finally:
                client.close()
            return status == 200 and all(
                any(q in b.get("queues", []) and b.get("last_seen", 0) > killed_at for b in beats)
                for q in ("downloads", "maintenance", "inference")
            )

        wait_for(fresh, 120, f"the stack did not reconnect:\n{stack.log()[-4000:]}", 1.0)
        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(30) == 0
        assert not answers(redis_url)
    finally:
        stack.stop()


@pytest.mark.django_db(transaction=True)
def test_on_every_interface_the_box_names_the_network_address_and_it_serves(  # type: ignore[no-untyped-def]
    stack_env, process_log_dir, tmp_path
) -> None:
    lan = lan_address()
    if lan is None:
        pytest.skip("this machine has no network address besides loopback")
    stack, port, _ = _runstack(
        stack_env,
        tmp_path,
        process_log_dir,
        "configured",
        "--host",
        "0.0.0.0",
        ALLOWED_HOSTS=f"localhost,127.0.0.1,{lan}",
    )
    try:
        wait_for(lambda: LOGIN_BOX.search(stack.log()), 180, f"no login box:\n{stack.log()[-4000:]}", 0.5)
        box = LOGIN_BOX.search(stack.log())
        assert box is not None and box.group(1) == f"http://127.0.0.1:{port}/"
        assert f"or, from your network: http://{lan}:{port}/" in box.group(0)
        with urllib.request.urlopen(f"http://{lan}:{port}/login/", timeout=30) as response:
            assert response.status == 200
        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(30) == 0
    finally:
        stack.stop()


def _ready_line(worker: str) -> re.Pattern[str]:
    return re.compile(rf"{worker}@\S+ ready\.")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _child(stack: ManagedProcess, marker: str) -> int:
    found = [pid for pid in stack.children() if marker in _cmdline(pid)]
    assert len(found) == 1, (marker, [(pid, _cmdline(pid)) for pid in stack.children()])
    return found[0]


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_child_that_keeps_dying_is_restarted_with_a_growing_delay(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    stack = Stack(
        [Service("flaky", [sys.executable, "-c", "print('up'); raise SystemExit(3)"])],
        env=dict(os.environ),
        var_dir=tmp_path,
    )
    seen = ""

    def delays() -> list[str]:
        nonlocal seen
        seen += capsys.readouterr().out
        return re.findall(r"flaky exited with code 3 after \d+ s; restarting it in (\d+) s", seen)

    stack.start()
    supervisor = threading.Thread(target=stack.wait)
    supervisor.start()
    try:
        wait_for(lambda: len(delays()) >= 4, 60, f"not restarted four times:\n{seen}", 0.2)
    finally:
        stack.request_stop()
        supervisor.join(10)
        stack.stop()
    assert delays()[:4] == ["1", "2", "4", "8"]
    assert seen.count("flaky | up") >= 4  # each restart really ran the program again


def test_a_closed_terminal_does_not_block_the_children(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`make run | head`, or a terminal whose pipe went away: the stack keeps draining its children's output,
    else a child blocks on its next write once the pipe buffer is full."""
    marker = tmp_path / "done"
    chatty = f"import pathlib\nfor _ in range(20000): print('x' * 100)\npathlib.Path({str(marker)!r}).write_text('ok')"
    script = f"""
import os, sys, time
from pathlib import Path
from dashboard.stack import Service, Stack
stack = Stack([Service("chatty", [sys.executable, "-c", {chatty!r}])], env=dict(os.environ), var_dir=Path({str(tmp_path)!r}))
stack.start()
deadline = time.monotonic() + 120
while not Path({str(marker)!r}).exists() and time.monotonic() < deadline:
    time.sleep(0.2)
stack.stop()
"""
    runner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert runner.stdout is not None
    assert runner.stdout.readline().startswith(b"    chatty | x")
    runner.stdout.close()  # the terminal goes away
    runner.wait(180)
    assert marker.exists() and marker.read_text() == "ok", (
        "the child blocked writing to a pipe nobody drained"
    )
