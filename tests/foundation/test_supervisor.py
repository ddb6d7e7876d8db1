"""dashboard/supervisor.py, the mechanics under runstack, the tests' workers and the benchmark: a child's whole
process group is stopped, a child that ignores SIGTERM is killed after the grace, a wait for a dead child ends
at once, and the restart delays grow while a child keeps dying young. With real processes."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from dashboard.supervisor import Backoff, Child, ChildExited, stop_all, wait_for

pytestmark = pytest.mark.processes  # starts real child processes


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (a reaped parent's child not yet collected) is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_ends_what_the_child_started_even_after_the_child_itself_died(tmp_path: Path) -> None:
    """A Celery worker killed with -9 leaves its pool children in its process group: stopping it ends them."""
    pid_file = tmp_path / "grandchild.pid"
    child = Child(
        "parent",
        _python(
            f"""
            import subprocess, sys, time
            pool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            open({str(pid_file)!r}, "w").write(str(pool.pid))
            time.sleep(300)
            """
        ),
        log_path=tmp_path / "parent.log",
    )
    try:
        child.wait_until(lambda: pid_file.exists() and pid_file.read_text(), 60)
        grandchild = int(pid_file.read_text())
        child.kill()  # the leader only, as a crash would
        child.process.wait(10)
        assert _alive(grandchild)
    finally:
        child.stop(grace=5)
    wait_for(lambda: not _alive(grandchild), 10, f"pid {grandchild} outlived its group's stop")


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    stubborn = Child(
        "stubborn",
        _python(
            """
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ignoring SIGTERM", flush=True)
            time.sleep(300)
            """
        ),
        log_path=tmp_path / "stubborn.log",
    )
    polite = Child("polite", _python("import time; time.sleep(300)"), log_path=tmp_path / "polite.log")
    stubborn.wait_until(lambda: "ignoring SIGTERM" in stubborn.log(), 60)

    stop_all([stubborn, polite], grace=0.5)

    assert stubborn.poll() == -signal.SIGKILL
    assert polite.poll() == -signal.SIGTERM


def test_waiting_for_a_child_that_died_fails_at_once_with_its_log(tmp_path: Path) -> None:
    child = Child(
        "doomed",
        _python("print('no such setting: FOO'); raise SystemExit(3)"),
        log_path=tmp_path / "doomed.log",
    )
    with pytest.raises(ChildExited) as died:
        # Never true: only the child's death can end this wait before the (long) timeout.
        child.wait_until(lambda: False, 120)
    assert "doomed exited with code 3" in str(died.value)
    assert "no such setting: FOO" in str(died.value)


def test_each_line_of_a_piped_child_reaches_the_callback(tmp_path: Path) -> None:
    lines: list[bytes] = []
    child = Child("chatty", _python("for i in range(3): print(f'line {i}')"), on_line=lines.append)
    child.process.wait(30)
    wait_for(lambda: len(lines) == 3, 10, f"lines seen: {lines}")
    assert lines == [b"line 0\n", b"line 1\n", b"line 2\n"]
    assert child.log() == ""  # no log file: the output went to the callback only


def test_restart_delays_double_while_a_child_dies_young_and_start_over_once_it_lived() -> None:
    backoff = Backoff(first=1.0, most=30.0, stable_after=60.0)

    young = [backoff.next_delay(lived=0.5) for _ in range(7)]
    after_a_stable_run = backoff.next_delay(lived=61.0)

    assert young == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert after_a_stable_run == 1.0
