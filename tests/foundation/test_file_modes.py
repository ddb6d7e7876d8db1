"""var/ and what the product writes in it are private to the account that runs it (issue 11, item 13): var/
0700, the SQLite database and its -wal/-shm files 0600, generated secrets 0600, whatever the umask says (a
default 022 made them 0644: world-readable sessions, password hashes and Hub tokens' ciphertext)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.foundation.test_production_settings import ROOT

pytestmark = pytest.mark.processes  # runs manage.py in subprocesses

# Opens the product's database (as a request would), writes, and reports the files while the connection is
# open: -wal and -shm only exist then.
_WRITE_AND_LIST = """
import os, django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS probe (x integer)")
    cursor.execute("INSERT INTO probe VALUES (1)")
    var = os.environ["VAR_DIR"]
    for name in sorted(os.listdir(var)):
        print(name, oct(os.stat(os.path.join(var, name)).st_mode & 0o777))
"""


def run_with_umask_022(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o022),
    )


def dev_env(var: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY", "CREDENTIALS_KEY")}
    env.update(DJANGO_SETTINGS_MODULE="dashboard.settings", VAR_DIR=str(var), DEV_SECRETS="1", DEBUG="0")
    return env


def modes(output: str) -> dict[str, str]:
    return dict(line.split() for line in output.splitlines() if line.strip())


def test_a_first_run_creates_var_and_its_files_private(tmp_path: Path) -> None:
    var = tmp_path / "var"
    result = run_with_umask_022(dev_env(var), "-c", _WRITE_AND_LIST)
    assert result.returncode == 0, result.stderr
    seen = modes(result.stdout)
    assert oct(var.stat().st_mode & 0o777) == "0o700"
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret_key", "credentials_key"):
        assert seen.get(name) == "0o600", (name, seen)


def test_an_existing_world_readable_install_is_tightened(tmp_path: Path) -> None:
    """An install from before this fix: var/ 0755 and its files 0644 are made private at the next start."""
    var = tmp_path / "var"
    assert run_with_umask_022(dev_env(var), "-c", _WRITE_AND_LIST).returncode == 0
    var.chmod(0o755)
    for path in var.iterdir():
        path.chmod(0o644)
    result = run_with_umask_022(dev_env(var), "-c", _WRITE_AND_LIST)
    assert result.returncode == 0, result.stderr
    seen = modes(result.stdout)
    assert oct(var.stat().st_mode & 0o777) == "0o700"
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret_key", "credentials_key"):
        assert seen.get(name) == "0o600", (name, seen)
