"""Property-based: whatever string arrives as a repo id, revision, Hub URL or repo file name, it is refused with
its code or it names a path inside the cache root. And a Hub listing that names `../x`, an absolute path or a
Windows path is refused before a byte is written. (Hand-picked examples: tests/downloads/test_validation.py.)"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models_app.models import Snapshot
from models_app.services import hub as hub_service
from models_app.services.cache_layout import repo_path
from models_app.services.errors import DownloadError
from models_app.services.hub_checks import write_ref
from models_app.services.validation import parse_hub_url, safe_relpath, validate_repo_id, validate_revision
from tests.downloads.conftest import resolve_requests, wait_job
from tests.reliability.conftest import incomplete_files, repo_dir

pytestmark = pytest.mark.reliability

ROOT = Path("/srv/hf-cache/hub")  # never touched: paths are only computed
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that path tricks are made of, joined at random: most results are refused, some are accepted, and
# every accepted one must stay inside.
# fmt: off
PIECES = st.sampled_from([
    "a", "B", "0", "x1", "models", "refs", "main", "-", "_", ".", "..", "...", "/", "//", "\\", "C:", "c:",
    "~", "%2e%2e", "%2f", ":", "\x00", "\n", " ", "\u2024", "\uff0e", "\u0430", ".git", ".lock", "@{", "--",
    "refs/pr/1", "snapshots", "blobs",
])
# fmt: on
TRICKY = st.lists(PIECES, min_size=1, max_size=12).map("".join)
ANY_TEXT = st.one_of(TRICKY, st.text(max_size=80), st.text(alphabet="./\\-_aZ09:", max_size=40))
GOOD_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}[A-Za-z0-9]", fullmatch=True)


def inside(child: Path, parent: Path) -> bool:
    resolved, base = Path(os.path.normpath(child)), Path(os.path.normpath(parent))
    return resolved == base or base in resolved.parents


def refused(exc: DownloadError, *codes: str) -> None:
    assert exc.code in codes, exc.code
    assert len(exc.message) < 400 and "\x00" not in exc.message


@PROPERTY
@given(
    st.one_of(
        ANY_TEXT, st.builds("{}/{}".format, GOOD_PART, GOOD_PART), st.builds("{}/{}".format, TRICKY, TRICKY)
    )
)
def test_a_repo_id_is_refused_or_names_one_folder_directly_under_the_cache_root(value: str) -> None:
    try:
        repo_id = validate_repo_id(value)
    except DownloadError as exc:
        return refused(exc, "invalid_repo_id")
    folder = repo_path(ROOT, repo_id)
    assert folder.parent == ROOT and folder.name.startswith("models--")
    assert inside(folder / "refs" / "main", folder) and ".." not in folder.parts


@PROPERTY
@given(st.one_of(ANY_TEXT, st.lists(st.one_of(GOOD_PART, TRICKY), min_size=1, max_size=4).map("/".join)))
def test_a_revision_is_refused_or_its_ref_file_stays_under_refs(value: str) -> None:
    try:
        revision = validate_revision(value)
    except DownloadError as exc:
        return refused(exc, "invalid_revision")
    refs = ROOT / "models--org--name" / "refs"
    assert inside(refs / revision, refs) and (refs / revision) != refs
    assert not PurePosixPath(revision).is_absolute() and ".." not in PurePosixPath(revision).parts


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(GOOD_PART, st.sampled_from(["..", ".", "a..b", ".x"])), min_size=1, max_size=4))
def test_an_accepted_revision_is_written_inside_the_repo_folder(tmp_path_factory, parts: list[str]) -> None:
    try:
        revision = validate_revision("/".join(parts))
    except DownloadError:
        return
    folder = tmp_path_factory.mktemp("repo")
    write_ref(folder, revision, "a" * 40)
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert len(written) == 1 and inside(written[0], folder / "refs") and written[0].read_text() == "a" * 40


@PROPERTY
@given(st.one_of(ANY_TEXT, st.lists(st.one_of(GOOD_PART, TRICKY), min_size=1, max_size=5).map("/".join)))
def test_a_repo_file_name_is_refused_or_stays_inside_the_snapshot(value: str) -> None:
    try:
        name = safe_relpath(value)
    except DownloadError as exc:
        return refused(exc, "integrity")
    snapshot = ROOT / "models--org--name" / "snapshots" / ("a" * 40)
    assert inside(snapshot / name, snapshot) and (snapshot / name) != snapshot
    # Nor does it escape on Windows, where a backslash or a drive letter would.
    windows = PureWindowsPath(name)
    assert not windows.is_absolute() and not windows.drive and ".." not in windows.parts


@PROPERTY
@given(
    st.one_of(
        ANY_TEXT,
        st.builds("https://huggingface.co/{}".format, ANY_TEXT),
        st.builds("https://huggingface.co/{}/{}/tree/{}".format, GOOD_PART, GOOD_PART, ANY_TEXT),
        st.builds("http://{}/{}".format, TRICKY, TRICKY),
    )
)
def test_a_hub_url_is_refused_or_yields_a_valid_repo_id_and_revision(value: str) -> None:
    try:
        repo_id, revision = parse_hub_url(value)
    except DownloadError as exc:
        return refused(exc, "invalid_repo_id", "invalid_revision")
    assert validate_repo_id(repo_id) == repo_id and validate_revision(revision) == revision


# --- A hostile listing, served by the local Hub ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("download_worker")
@pytest.mark.parametrize(
    "hostile", ["../x", "sub/../../x", "/etc/mlxcr-x", "C:\\mlxcr-x", "sub\\..\\..\\x", "c:/mlxcr-x"]
)
def test_a_listing_with_a_path_outside_the_snapshot_is_refused(hub, publish, hostile: str) -> None:
    repo_id, sha = publish("hostile", extra={hostile: b"owned"}, raw_paths=True)
    assert hostile in hub.repo(repo_id).commits[sha].files  # the Hub lists it as given

    job = wait_job(hub_service.download_model(repo_id))

    assert (job.state, job.error_code) == ("failed", "integrity")
    assert "Unsafe file path" in job.error_message and job.attempts == 1
    assert resolve_requests(hub, repo_id) == []  # refused from the listing: no file was fetched
    assert not Snapshot.objects.filter(repository__repo_id=repo_id).exists()
    folder = repo_dir(repo_id)
    for planted in (folder.parent / "x", folder / "x", Path("/etc/mlxcr-x"), folder.parent.parent / "x"):
        assert not planted.exists(), planted
    assert not (folder / "snapshots").exists() and incomplete_files(repo_id) == []
