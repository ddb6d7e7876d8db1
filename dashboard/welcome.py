"""What `make run` says last, once the stack is up: where to open it and, on a first run, the admin login (shown
once). Printed after a readiness check so it is not buried under the workers' start-up logs."""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from models_app.services.accounts import FirstLogin

WILDCARDS = ("0.0.0.0", "::", "")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def local_url(host: str, port: int) -> str:
    """The URL that reaches the web server from this machine."""
    if host in WILDCARDS:
        host = "::1" if host == "::" else "127.0.0.1"
    return f"http://{_url_host(host)}:{port}/"


def lan_address() -> str | None:
    """This machine's address on its network (the interface its default route uses), or None offline. A UDP
    connect sends nothing; it only makes the kernel choose the source address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def wait_ready(
    probe_url: str, *, host_header: str, healthy: Callable[[], bool], stop: threading.Event, timeout: float
) -> bool:
    """Wait until `healthy()` (database, Redis, a worker on every queue) and the web server serves
    `probe_url`. False on timeout or when the stack is being stopped. Not by polling /healthz: each of its 503s
    while the workers boot would be an ERROR line in the very log the login box should close."""
    request = urllib.request.Request(probe_url, headers={"Host": host_header})
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        if healthy():
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
        stop.wait(1.0)
    return False


def login_box(*, urls: Iterable[str], login: FirstLogin | None, notes: Iterable[str] = ()) -> str:
    lines: list[str] = []
    for index, url in enumerate(urls):
        lines.append(
            f"MLX Control Room is up: open {url}" if index == 0 else f"  or, from your network: {url}"
        )
    if login is not None:
        if lines:
            lines.append("")
        lines += [
            "First run: an admin account was created. Log in with",
            f"    username: {login.username}",
            f"    password: {login.password}",
            "This password is shown only this once. Change it in the admin (Users)",
            f"or with `manage.py changepassword {login.username}`.",
        ]
    notes = list(notes)
    if notes:
        lines += ["", *notes]
    width = max(len(line) for line in lines) + 4
    bar = "#" * (width + 2)
    body = [f"#  {line.ljust(width - 2)}#" for line in lines]
    box = "\n".join([bar, f"#{' ' * width}#", *body, f"#{' ' * width}#", bar])
    if sys.stdout.isatty():
        box = f"\033[1;32m{box}\033[0m"
    return f"\n{box}\n"
