"""Child processes, each the leader of a process group of its own: start one with its environment and its
output (a log file, a callback per line, or nowhere), wait until it answers, stop its whole group.

The one mechanism under everything that starts our processes; each user adds only its own policy:
`manage.py runstack` (dashboard/stack.py) restarts a child that dies, after a `Backoff`; the tests
(devkit/processes.py) fail as soon as a child they wait for has died; the benchmark (bench/stack.py) starts
its children once and stops them once. It lives in the product because runstack is product code; devkit and
bench import it from here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# A stopped child has this long after SIGTERM to exit before its group gets SIGKILL.
STOP_GRACE = 15.0


class ChildExited(RuntimeError):
    """A child died while something waited for it to answer."""


def wait_for(predicate: Callable[[], object], timeout: float, message: str, interval: float = 0.05) -> None:
    """Poll `predicate` until it is true; TimeoutError(message) after `timeout` seconds. An exception it raises
    (a child that died) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(message)


class Child:
    """One subprocess in a session of its own, so its process group is its own: Ctrl-C in our terminal reaches
    us only (we stop children in our order), and a signal to the group reaches what the child started too (a
    Celery worker's pool children, uvicorn's workers).

    Its output (stdout and stderr together) goes to `log_path` (appended), or line by line to `on_line` (read
    by a thread of ours, so the child never blocks on a full pipe), or nowhere."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_path: Path | None = None,
        on_line: Callable[[bytes], None] | None = None,
    ) -> None:
        if log_path is not None and on_line is not None:
            raise ValueError("a child's output goes to a log file or to a callback, not both")
        self.name = name
        self.log_path = log_path
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            # The child writes through its own copy of the descriptor: ours can close at once.
            with log_path.open("ab") as log:
                self.process = self._popen(argv, env, cwd, log)
        else:
            self.process = self._popen(argv, env, cwd, subprocess.PIPE if on_line else subprocess.DEVNULL)
        if on_line is not None:
            threading.Thread(
                target=self._pump, args=(on_line,), daemon=True, name=f"output of {name}"
            ).start()

    @staticmethod
    def _popen(
        argv: Sequence[str], env: dict[str, str] | None, cwd: Path | None, out: int | IO[bytes]
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _pump(self, on_line: Callable[[bytes], None]) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            on_line(raw)

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None."""
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]

    def check(self) -> None:
        """Raise ChildExited, with the end of its log, if the child has exited."""
        code = self.process.poll()
        if code is not None:
            raise ChildExited(f"{self.name} exited with code {code}:\n{self.tail()}")

    def wait_until(
        self, answers: Callable[[], object], timeout: float, what: str = "", interval: float = 0.1
    ) -> None:
        """Wait until `answers()` is true; ChildExited as soon as the child dies, TimeoutError after `timeout`."""

        def ready() -> object:
            self.check()
            return answers()

        wait_for(
            ready, timeout, f"{what or self.name} not ready after {timeout:g} s:\n{self.tail()}", interval
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child itself, not its group: what a crash of the main process looks like (the group's
        other members, a worker's pool children, live on)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        """Signal the child's whole process group, even once its leader is gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def stop(self, grace: float = STOP_GRACE) -> None:
        stop_all([self], grace)


def stop_all(children: Sequence[Child], grace: float = STOP_GRACE) -> None:
    """SIGTERM to every child's group at once, then one deadline for all of them; a child still running after
    `grace` seconds gets SIGKILL. Whatever is left in a group after its leader exited (a worker's pool children)
    is killed too: nothing a child started outlives it."""
    for child in children:
        if child.alive():  # one that exited already may have left its group behind: the SIGKILL below ends it
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(5)
        child.signal_group(signal.SIGKILL)


@dataclass
class Backoff:
    """Restart delays for a child that keeps dying: they double from `first` up to `most` while it dies young;
    one that ran `stable_after` seconds before dying is restarted after `first` again. A child that cannot
    start at all (a port in use, a broken setting) so costs a line every `most` seconds, not a spinning CPU."""

    first: float = 1.0
    most: float = 30.0
    stable_after: float = 60.0
    delay: float = 0.0

    def next_delay(self, lived: float) -> float:
        """The delay before restarting a child that died after `lived` seconds."""
        self.delay = (
            self.first if lived >= self.stable_after else min(self.most, max(self.first, self.delay * 2))
        )
        return self.delay
