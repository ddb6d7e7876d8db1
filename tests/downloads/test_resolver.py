"""hub_guard.Resolver gives os.path.realpath's answer for every kind of entry a cache folder can hold (the
checks after a pull trust it to say where a snapshot's links lead), with a readlink per link instead of a
walk of every component."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models_app.services.hub_guard import Resolver, outside_paths


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo folder as huggingface_hub lays it out, with every odd entry a hostile answer or a hand could
    leave in its snapshot."""
    root = tmp_path / "real" / "models--org--name"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / "aaa").write_bytes(b"a")
    (root / "blobs" / "bbb").write_bytes(b"b")
    snap = root / "snapshots" / "sha"
    (snap / "sub" / "deeper").mkdir(parents=True)
    os.symlink("../../blobs/aaa", snap / "plain")
    os.symlink("../../../blobs/bbb", snap / "sub" / "nested")
    os.symlink("../../../../blobs/aaa", snap / "sub" / "deeper" / "deepest")
    os.symlink(str(root / "blobs" / "bbb"), snap / "absolute")
    os.symlink("plain", snap / "chained")
    os.symlink("../../../../outside", snap / "escape")
    os.symlink("sub/../../../blobs/aaa", snap / "dotdot-after-a-name")
    os.symlink("sub", snap / "folder-link")
    os.symlink("../../blobs/missing", snap / "dangling")
    os.symlink("loop-b", snap / "loop-a")
    os.symlink("loop-a", snap / "loop-b")
    (snap / "regular").write_bytes(b"r")
    os.symlink(str(tmp_path / "real"), tmp_path / "alias")  # the cache reached through a linked folder
    return root


def every_entry(folder: Path) -> list[str]:
    return [*sorted(str(p) for p in folder.rglob("*")), str(folder / "folder-link" / "nested")]


def test_the_resolver_answers_as_realpath_for_every_entry(repo: Path, tmp_path: Path) -> None:
    resolve = Resolver()
    aliased = tmp_path / "alias" / repo.name / "snapshots" / "sha"
    for folder in (repo / "snapshots" / "sha", aliased):
        for entry in every_entry(folder):
            assert resolve(entry) == os.path.realpath(entry), entry


def test_outside_paths_finds_exactly_the_entries_that_leave_the_repo(repo: Path) -> None:
    outside = outside_paths(repo, [repo / "snapshots" / "sha"])

    assert sorted(p.name for p in outside) == ["escape"]
