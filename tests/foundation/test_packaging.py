"""The project installs the way `make run` installs it: pip builds it with the setuptools that pyproject.toml
allows, quietly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.processes  # builds and installs the package in subprocesses

ROOT = Path(__file__).resolve().parents[2]


def test_the_oldest_allowed_setuptools_builds_it_with_an_spdx_licence_and_no_warning(tmp_path: Path) -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    floor = re.fullmatch(r"setuptools>=(\d+)", setuptools)
    assert floor, setuptools
    # The oldest release line the floor allows, not whatever is newest today.
    (tmp_path / "build-constraints.txt").write_text(f"setuptools~={floor.group(1)}.0\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-v",
            "--build-constraint",
            str(tmp_path / "build-constraints.txt"),
            "-w",
            str(tmp_path / "wheel"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"setuptools-{floor.group(1)}." in output  # the constraint took effect
    assert "Deprecat" not in output, output[-4000:]
    (wheel,) = (tmp_path / "wheel").glob("mlx_control_room-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: Apache-2.0" in archive.read(metadata).decode()
        # The product only: the harness (devkit), the tests and the benchmark stay in the checkout.
        top_level = {name.split("/", 1)[0] for name in archive.namelist() if ".dist-info/" not in name}
        assert top_level == {"dashboard", "models_app", "tasks"}


def test_the_editable_install_make_run_does_prints_no_warning_box(tmp_path: Path) -> None:
    """The install step of `make run`, with the Makefile's own environment, prints nothing of its own (pip's
    "Location ... is ignored" lines come from a pip configuration naming absent local indexes, not from us)."""
    quiet = re.search(r'^QUIET_BUILD := PYTHONWARNINGS="([^"]+)"$', (ROOT / "Makefile").read_text(), re.M)
    assert quiet, "the Makefile's install step has no warning filter"
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    result = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "pip"), "install", "-q", "--no-deps", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": quiet.group(1)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip()
        and not re.match(r"WARNING: Location '.*' is ignored", line)
        # pip's notice that a newer pip exists depends on the day, not on this project.
        and "new release of pip" not in line
        and "To update, run" not in line
    ]
    assert printed == []
