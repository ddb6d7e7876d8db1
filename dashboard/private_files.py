"""Files that only the account running the product may read: var/, the SQLite database, generated secrets.

Modes are set explicitly instead of trusting the umask: a default umask of 022 left the database (sessions,
password hashes) and the generated keys world-readable. Existing files from older installs are tightened too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
# SQLite creates these next to the database with the database file's own mode (unix VFS), so a 0600
# database gives 0600 companions; existing ones are tightened in case they predate that.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        path.chmod(DIR_MODE)
    return path


def _tighten(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_mode & 0o777 != FILE_MODE:
            path.chmod(FILE_MODE)


def private_sqlite_file(path: Path) -> Path:
    """Create the database file 0600 before SQLite does (it would use the umask), tighten an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        _tighten(candidate)
    return path


def read_private_text(path: Path) -> str | None:
    """The file's text (tightened to 0600 first), or None when it does not exist."""
    try:
        _tighten(path)
        return path.read_text()
    except FileNotFoundError:
        return None


def write_private_text(path: Path, text: str) -> None:
    """Written through a descriptor opened 0600: never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    _tighten(path)
