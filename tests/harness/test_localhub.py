"""The local Hub look-alike, checked through real huggingface_hub calls over HTTP.

Every call passes `endpoint=hub.url` explicitly: huggingface_hub reads HF_ENDPOINT at import
time, so setting it here would be too late whenever another module imported it first.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from devkit.localhub import LocalHub, git_blob_sha1, start_local_hub
from devkit.processes import wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REPO = "mlx-community/tiny-model"
FILES: dict[str, bytes] = {
    "config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
    "README.md": b"# tiny\n",
    "model.safetensors": os.urandom(3000),  # LFS by extension
    "tokenizer.json": b"{" + b" " * 2000 + b"}",  # LFS by size (>= 1024 B)
    "sub/deep/notes.txt": b"nested",
}
TOKEN = "hf_localtesttoken"


@pytest.fixture(autouse=True)
def isolated_hf_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep huggingface_hub away from the real Hub, the developer's token and telemetry.

    The library snapshots these variables into `constants` at import, so patch both."""
    for name in ("HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        importlib.import_module("huggingface_hub.utils.tqdm"), "HF_HUB_DISABLE_PROGRESS_BARS", True
    )


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    local_hub = start_local_hub(tmp_path_factory)
    yield local_hub
    local_hub.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hub-cache"


def snapshot_files(path: str | Path) -> dict[str, bytes]:
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def resolve_url(hub: LocalHub, filename: str, revision: str = "main", repo: str = REPO) -> str:
    return f"{hub.url}/{repo}/resolve/{revision}/{filename}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- repos and revisions


def test_snapshot_download_returns_the_files_at_the_commit_sha(hub: LocalHub, cache: Path) -> None:
    sha = hub.create_repo(REPO, FILES)

    path = Path(snapshot_download(REPO, cache_dir=cache, endpoint=hub.url))

    assert path == cache / "models--mlx-community--tiny-model" / "snapshots" / sha
    assert snapshot_files(path) == FILES
    assert (cache / "models--mlx-community--tiny-model" / "refs" / "main").read_text() == sha
    # Blob names are the ETags: sha256 for LFS files, git blob sha1 for the others.
    blobs = {p.name for p in (cache / "models--mlx-community--tiny-model" / "blobs").iterdir()}
    assert sha256(FILES["model.safetensors"]) in blobs
    assert sha256(FILES["tokenizer.json"]) in blobs
    assert git_blob_sha1(FILES["config.json"]) in blobs
    assert [(r.method, r.status) for r in hub.requests[:2]] == [("GET", 200), ("GET", 200)]


def test_a_commit_changes_the_sha_and_the_next_snapshot_gets_the_new_files(
    hub: LocalHub, cache: Path
) -> None:
    first = hub.create_repo(REPO, FILES)
    old_path = snapshot_download(REPO, cache_dir=cache, endpoint=hub.url)

    second = hub.commit(
        REPO, {"config.json": b'{"model_type": "qwen2"}', "extra.txt": b"new"}, delete=["README.md"]
    )
    new_path = snapshot_download(REPO, cache_dir=cache, endpoint=hub.url)

    assert second != first and hub.head_sha(REPO) == second
    assert Path(new_path).name == second
    expected = {**FILES, "config.json": b'{"model_type": "qwen2"}', "extra.txt": b"new"}
    del expected["README.md"]
    assert snapshot_files(new_path) == expected
    assert snapshot_files(old_path) == FILES


def test_a_commit_without_content_changes_still_gets_a_new_sha(hub: LocalHub) -> None:
    first = hub.create_repo(REPO, FILES)
    assert hub.commit(REPO, {"README.md": FILES["README.md"]}) != first


def test_a_deleted_repo_is_gone_and_can_be_created_again(hub: LocalHub) -> None:
    hub.create_repo(REPO, FILES)
    with pytest.raises(ValueError):
        hub.create_repo(REPO, FILES)
    hub.delete_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url).model_info(REPO)
    sha = hub.create_repo(REPO, {"a.txt": b"a"})
    assert HfApi(endpoint=hub.url).model_info(REPO).sha == sha


def test_tag_sha_and_url_encoded_branch_revisions(hub: LocalHub, cache: Path) -> None:
    first = hub.create_repo(REPO, FILES)
    hub.add_tag(REPO, "v1", first)
    hub.commit(REPO, {"README.md": b"v2"})
    pr = hub.commit(REPO, {"README.md": b"from a pr"}, branch="refs/pr/1")

    by_tag = snapshot_download(REPO, revision="v1", cache_dir=cache, endpoint=hub.url)
    by_sha = snapshot_download(REPO, revision=first, cache_dir=cache, endpoint=hub.url)
    # The client sends refs%2Fpr%2F1: the revision is one URL-encoded path segment.
    from_pr = hf_hub_download(REPO, "README.md", revision="refs/pr/1", cache_dir=cache, endpoint=hub.url)

    assert Path(by_tag).name == Path(by_sha).name == first
    assert snapshot_files(by_tag) == FILES
    assert Path(from_pr).read_bytes() == b"from a pr"
    assert f"/snapshots/{pr}/" in from_pr
    assert any("/resolve/refs%2Fpr%2F1/" in r.path for r in hub.requests)


def test_create_repo_on_another_branch_forks_from_an_empty_main(hub: LocalHub) -> None:
    sha = hub.create_repo(REPO, FILES, branch="dev")
    api = HfApi(endpoint=hub.url)
    assert api.model_info(REPO, revision="dev").sha == sha
    assert api.model_info(REPO).siblings == []


def test_file_names_with_spaces_and_unicode(hub: LocalHub, cache: Path) -> None:
    files = {"dir with space/ünïcode #1.txt": b"u", "100%.json": b"{}"}
    hub.create_repo(REPO, files)

    assert snapshot_files(snapshot_download(REPO, cache_dir=cache, endpoint=hub.url)) == files
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "ünï missing.txt", cache_dir=cache, endpoint=hub.url)


# ----------------------------------------------------------------------------- access control


def test_private_repo_needs_a_token_that_can_read_it(hub: LocalHub, cache: Path) -> None:
    hub.create_repo(REPO, FILES, private=True)
    hub.add_token(TOKEN)
    hub.add_token("hf_other", "bob", can_read=["someone/else"])

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        snapshot_download(REPO, cache_dir=cache, endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError) as unknown_token:
        snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token="hf_wrong")
    with pytest.raises(RepositoryNotFoundError) as other_user:
        HfApi(endpoint=hub.url).model_info(REPO, token="hf_other")
    path = snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token=TOKEN)

    assert anonymous.value.response.status_code == 401
    assert unknown_token.value.response.status_code == 401
    assert other_user.value.response.status_code == 404  # the Hub hides private repos
    assert snapshot_files(path) == FILES
    assert hub.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"

    hub.set_private(REPO, False)
    assert HfApi(endpoint=hub.url).model_info(REPO).private is False


def test_gated_repo_needs_a_grant_but_info_stays_readable(hub: LocalHub, cache: Path) -> None:
    hub.create_repo(REPO, FILES, gated=True)
    hub.add_token(TOKEN, "alice")
    api = HfApi(endpoint=hub.url)

    assert api.model_info(REPO).gated == "manual"
    with pytest.raises(GatedRepoError) as anonymous:
        snapshot_download(REPO, cache_dir=cache, endpoint=hub.url)
    with pytest.raises(GatedRepoError) as not_granted:
        snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token=TOKEN)
    hub.grant_gated(REPO, "alice")
    path = snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, token=TOKEN)

    assert anonymous.value.response.status_code == 401
    assert not_granted.value.response.status_code == 403
    assert snapshot_files(path) == FILES
    hub.set_gated(REPO, False)
    assert api.model_info(REPO).gated is False


def test_unknown_repo_revision_and_file(hub: LocalHub, cache: Path) -> None:
    sha = hub.create_repo(REPO, FILES)

    with pytest.raises(RepositoryNotFoundError) as no_repo:
        snapshot_download("mlx-community/nope", cache_dir=cache, endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch", cache_dir=cache, endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.url).model_info(REPO, revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", cache_dir=cache, endpoint=hub.url)

    assert no_repo.value.response.status_code == 404
    assert no_repo.value.response.headers["X-Error-Code"] == "RepoNotFound"
    assert hub.requests[-1].status == 404
    # The client remembers the miss under the commit the server named in X-Repo-Commit.
    assert (cache / "models--mlx-community--tiny-model" / ".no_exist" / sha / "missing.txt").exists()


def test_whoami_with_and_without_a_valid_token(hub: LocalHub) -> None:
    hub.add_token(TOKEN, "alice")
    api = HfApi(endpoint=hub.url)

    me = api.whoami(token=TOKEN)
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        api.whoami(token="hf_wrong")

    assert me["type"] == "user" and me["name"] == "alice"
    assert me["auth"]["accessToken"]["role"] == "read"


# ----------------------------------------------------------------------------- metadata


def test_model_info_with_files_metadata_has_sizes_and_lfs_sha256(hub: LocalHub) -> None:
    sha = hub.create_repo(REPO, FILES, info={"pipeline_tag": "text-generation"})
    api = HfApi(endpoint=hub.url)

    info = api.model_info(REPO, files_metadata=True)
    plain = api.model_info(REPO)

    assert info.sha == sha and info.library_name == "mlx" and info.pipeline_tag == "text-generation"
    assert info.config == {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert {name: s.size for name, s in siblings.items()} == {n: len(c) for n, c in FILES.items()}
    lfs = siblings["model.safetensors"].lfs
    assert lfs is not None and lfs.sha256 == sha256(FILES["model.safetensors"])
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(FILES["config.json"])
    assert [s.size for s in plain.siblings or []] == [None] * len(FILES)


def test_list_repo_refs_lists_branches_and_tags(hub: LocalHub) -> None:
    first = hub.create_repo(REPO, FILES)
    dev = hub.commit(REPO, {"a.txt": b"a"}, branch="dev")
    hub.add_tag(REPO, "v1.0", first)

    refs = HfApi(endpoint=hub.url).list_repo_refs(REPO)

    assert {(b.name, b.ref, b.target_commit) for b in refs.branches} == {
        ("main", "refs/heads/main", first),
        ("dev", "refs/heads/dev", dev),
    }
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", first)]


def test_list_repo_tree_and_files(hub: LocalHub) -> None:
    hub.create_repo(REPO, FILES)
    api = HfApi(endpoint=hub.url)

    top = {e.path: type(e).__name__ for e in api.list_repo_tree(REPO)}
    deep = [e.path for e in api.list_repo_tree(REPO, path_in_repo="sub", recursive=True)]

    assert top == {
        "sub": "RepoFolder",
        "config.json": "RepoFile",
        "README.md": "RepoFile",
        "model.safetensors": "RepoFile",
        "tokenizer.json": "RepoFile",
    }
    assert deep == ["sub/deep", "sub/deep/notes.txt"]
    assert sorted(api.list_repo_files(REPO)) == sorted(FILES)


def test_resolve_headers_and_range_requests(hub: LocalHub) -> None:
    sha = hub.create_repo(REPO, FILES)
    data = FILES["model.safetensors"]
    url = resolve_url(hub, "model.safetensors")

    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5) as head:
        assert head.headers["X-Repo-Commit"] == sha
        assert head.headers["X-Linked-Etag"] == head.headers["ETag"] == f'"{sha256(data)}"'
        assert head.headers["X-Linked-Size"] == head.headers["Content-Length"] == str(len(data))
        assert head.headers["Accept-Ranges"] == "bytes"
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={"Range": "bytes=10-19"}), timeout=5
    ) as part:
        assert part.status == 206
        assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
        assert part.read() == data[10:20]
    with urllib.request.urlopen(
        urllib.request.Request(url, headers={"Range": "bytes=-5"}), timeout=5
    ) as tail:
        assert tail.status == 206 and tail.read() == data[-5:]
    with pytest.raises(urllib.error.HTTPError) as beyond:
        urllib.request.urlopen(
            urllib.request.Request(url, headers={"Range": f"bytes={len(data)}-"}), timeout=5
        )
    assert beyond.value.code == 416
    with urllib.request.urlopen(resolve_url(hub, "README.md"), timeout=5) as small:
        assert small.headers["ETag"] == f'"{git_blob_sha1(FILES["README.md"])}"'
        assert "X-Linked-Etag" not in small.headers


# ----------------------------------------------------------------------------- faults


@pytest.fixture
def default_chunk_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's own 10 MiB write chunks: the product's download guard shrinks them process-wide, and
    another test in this process may have installed it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 10 * 1024 * 1024)


@pytest.mark.usefixtures("default_chunk_size")
def test_drop_before_10mib_makes_the_client_refetch_the_whole_file(hub: LocalHub, cache: Path) -> None:
    hub.create_repo(REPO, FILES)
    fault = hub.faults.drop_after(1000, pattern="*.safetensors")

    path = hf_hub_download(REPO, "model.safetensors", cache_dir=cache, endpoint=hub.url)

    assert Path(path).read_bytes() == FILES["model.safetensors"]
    gets = [r for r in hub.requests if r.method == "GET"]
    # The client writes 10 MiB chunks, so nothing was kept: the retry (1 s later) has no Range.
    assert [(r.status, r.headers.get("Range")) for r in gets] == [(200, None), (200, None)]
    assert fault.hits == 1


@pytest.mark.usefixtures("default_chunk_size")
def test_drop_after_10mib_resumes_with_a_range_request(hub: LocalHub, cache: Path) -> None:
    big = os.urandom(12 * 1024 * 1024)
    hub.create_repo(REPO, {"weights.npz": big})
    hub.faults.drop_after(11 * 1024 * 1024)

    path = hf_hub_download(REPO, "weights.npz", cache_dir=cache, endpoint=hub.url)

    assert sha256(Path(path).read_bytes()) == sha256(big)
    gets = [r for r in hub.requests if r.method == "GET"]
    assert [(r.status, r.headers.get("Range")) for r in gets] == [(200, None), (206, "bytes=10485760-")]


def test_drop_with_a_tcp_reset_is_not_retried_by_the_client(hub: LocalHub, cache: Path) -> None:
    hub.create_repo(REPO, FILES)
    hub.faults.drop_after(1000, reset=True)

    # A reset surfaces as a raw httpx2.ReadError: http_get only retries ConnectError,
    # TimeoutException and RemoteProtocolError (an early clean close).
    with pytest.raises(httpx2.ReadError):
        hf_hub_download(REPO, "model.safetensors", cache_dir=cache, endpoint=hub.url)
    assert [r.method for r in hub.requests] == ["HEAD", "GET"]


def test_wrong_bytes_land_on_disk_unverified(hub: LocalHub, cache: Path) -> None:
    hub.create_repo(REPO, FILES)
    hub.faults.wrong_bytes(pattern="*.safetensors")

    path = Path(hf_hub_download(REPO, "model.safetensors", cache_dir=cache, endpoint=hub.url))

    data = path.read_bytes()
    assert len(data) == len(FILES["model.safetensors"])
    assert sha256(data) != sha256(FILES["model.safetensors"])
    # The blob is still named after the sha256 the server announced: the client does not check.
    assert path.resolve().name == sha256(FILES["model.safetensors"])


def test_fail_500_once_on_an_api_route_then_ok(hub: LocalHub) -> None:
    sha = hub.create_repo(REPO, FILES)
    fault = hub.faults.fail_500(path="/api/models/*")
    api = HfApi(endpoint=hub.url)

    with pytest.raises(HfHubHTTPError) as failed:
        api.model_info(REPO)  # no retry on the API
    assert failed.value.response.status_code == 500
    assert api.model_info(REPO).sha == sha
    assert fault.hits == 1


def test_fail_500_on_resolve_head_is_retried_but_on_get_it_is_not(hub: LocalHub, cache: Path) -> None:
    hub.create_repo(REPO, FILES)

    hub.faults.fail_500(methods=["HEAD"])
    path = hf_hub_download(REPO, "README.md", cache_dir=cache, endpoint=hub.url)
    assert Path(path).read_bytes() == FILES["README.md"]
    assert [(r.method, r.status) for r in hub.requests] == [("HEAD", 500), ("HEAD", 200), ("GET", 200)]

    hub.faults.clear()
    hub.faults.fail_500(methods=["GET"], pattern="config.json")
    with pytest.raises(HfHubHTTPError) as failed:
        hf_hub_download(REPO, "config.json", cache_dir=cache, endpoint=hub.url)
    assert failed.value.response.status_code == 500


def test_stall_times_out_a_short_timeout_client_while_the_hub_stays_responsive(hub: LocalHub) -> None:
    sha = hub.create_repo(REPO, FILES)
    hub.faults.stall_after_headers(30, pattern="config.json")

    with urllib.request.urlopen(resolve_url(hub, "config.json"), timeout=0.2) as stalled:
        assert stalled.status == 200  # headers arrive at once, then nothing
        with pytest.raises(TimeoutError):
            stalled.read()
        assert HfApi(endpoint=hub.url).model_info(REPO).sha == sha
        started = time.monotonic()
        hub.stop()  # must not wait for the stalled response
        assert time.monotonic() - started < 1


def test_stall_makes_hf_hub_download_time_out_and_retry(
    hub: LocalHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.create_repo(REPO, FILES)
    hub.faults.stall_after_headers(30)
    # http_get reads this constant at call time (unlike the HF_HUB_DOWNLOAD_TIMEOUT env var).
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.3)

    path = hf_hub_download(REPO, "README.md", cache_dir=cache, endpoint=hub.url)

    assert Path(path).read_bytes() == FILES["README.md"]
    assert [r.method for r in hub.requests] == ["HEAD", "GET", "GET"]


def test_ignore_range_answers_200_with_the_whole_body(hub: LocalHub) -> None:
    hub.create_repo(REPO, FILES)
    hub.faults.ignore_range()

    request = urllib.request.Request(resolve_url(hub, "model.safetensors"), headers={"Range": "bytes=10-"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert "Content-Range" not in response.headers
        assert response.read() == FILES["model.safetensors"]


def test_throttle_limits_the_download_rate(hub: LocalHub, cache: Path) -> None:
    data = os.urandom(30_000)
    hub.create_repo(REPO, {"slow.bin": data})
    hub.faults.throttle(100_000)

    started = time.monotonic()
    path = hf_hub_download(REPO, "slow.bin", cache_dir=cache, endpoint=hub.url)
    elapsed = time.monotonic() - started

    assert Path(path).read_bytes() == data
    # 30 kB at 100 kB/s: never sooner than 0.3 s (a lower bound only: a loaded machine may take longer).
    assert elapsed >= 0.3


def test_faults_only_hit_matching_files_and_clear(hub: LocalHub) -> None:
    hub.create_repo(REPO, FILES)
    fault = hub.faults.wrong_bytes(pattern="*.safetensors")

    with urllib.request.urlopen(resolve_url(hub, "config.json"), timeout=5) as response:
        assert response.read() == FILES["config.json"]
    assert fault.hits == 0
    hub.faults.clear()
    with urllib.request.urlopen(resolve_url(hub, "model.safetensors"), timeout=5) as response:
        assert response.read() == FILES["model.safetensors"]


# ----------------------------------------------------------------------------- storage and demo mode


def test_path_contents_are_copied_so_later_edits_do_not_leak(
    hub: LocalHub, tmp_path: Path, cache: Path
) -> None:
    source = tmp_path / "weights.safetensors"
    source.write_bytes(b"original" * 1000)
    hub.create_repo(REPO, {"weights.safetensors": source})
    source.write_bytes(b"edited")

    path = hf_hub_download(REPO, "weights.safetensors", cache_dir=cache, endpoint=hub.url)

    assert Path(path).read_bytes() == b"original" * 1000


@pytest.mark.processes  # runs the local Hub as its own process
def test_main_serves_a_directory_of_repos(tmp_path: Path, cache: Path) -> None:
    repo_dir = tmp_path / "root" / "mlx-community" / "demo"
    (repo_dir / "sub").mkdir(parents=True)
    (repo_dir / "config.json").write_bytes(b"{}")
    (repo_dir / "sub" / "x.txt").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.localhub", "--port", "0", "--root", str(tmp_path / "root")],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", first_line)
        assert match, first_line
        path = snapshot_download("mlx-community/demo", cache_dir=cache, endpoint=match.group())
        assert snapshot_files(path) == {"config.json": b"{}", "sub/x.txt": b"x"}
    finally:
        process.terminate()
        process.wait(timeout=5)


def test_concurrent_downloads_of_many_files(hub: LocalHub, cache: Path) -> None:
    files = {f"shard-{i:02d}.safetensors": os.urandom(50_000) for i in range(24)}
    hub.create_repo(REPO, files)
    results: list[dict[str, bytes]] = []

    def download(n: int) -> None:
        results.append(snapshot_files(snapshot_download(REPO, cache_dir=cache / str(n), endpoint=hub.url)))

    threads = [threading.Thread(target=download, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert results == [files] * 3


# ----------------------------------------------------------------------------- Xet storage over HTTP


@pytest.fixture
def xet_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    local_hub = LocalHub(tmp_path_factory.mktemp("xet-http-hub"), xet=True, xet_transport="http").start()
    yield local_hub
    local_hub.stop()


def xet_get(hub: LocalHub, path: str, **headers: str) -> urllib.request.Request:
    return urllib.request.Request(f"{hub.url}/cas{path}", headers=headers)


def xet_token(hub: LocalHub, repo: str = REPO) -> str:
    sha = hub.head_sha(repo)
    with urllib.request.urlopen(f"{hub.url}/api/models/{repo}/xet-read-token/{sha}", timeout=5) as answer:
        assert answer.headers["X-Xet-Cas-Url"] == f"{hub.url}/cas"
        return str(answer.headers["X-Xet-Access-Token"])


def test_hf_xet_downloads_byte_identical_files_from_the_http_cas(xet_hub: LocalHub, cache: Path) -> None:
    weights = os.urandom(3_000_000)
    xet_hub.create_repo(REPO, {**FILES, "weights.safetensors": weights})
    xet_hash = xet_hub.xet_hash(REPO, "weights.safetensors")

    path = Path(snapshot_download(REPO, cache_dir=cache, endpoint=xet_hub.url))

    assert snapshot_files(path) == {**FILES, "weights.safetensors": weights}
    # No LFS file came through /resolve: hf_xet asked the CAS how to rebuild each one, then fetched xorb ranges.
    gets = [r.path for r in xet_hub.requests if r.method == "GET"]
    assert not any(p.endswith(("/weights.safetensors", "/model.safetensors")) for p in gets)
    assert any(p.startswith(f"/cas/v2/reconstructions/{xet_hash}") for p in gets)
    ranges = [r for r in xet_hub.requests if r.path.startswith("/cas/xorbs/")]
    assert ranges and all(r.status == 206 and r.headers.get("Range") for r in ranges)
    responses = xet_hub.xet_responses(xet_hash)
    assert responses and all(r.state == "complete" for r in responses)
    assert xet_hub.xet_bytes_sent(xet_hash) > len(weights)  # random bytes: stored as sent, plus chunk headers


@pytest.mark.processes  # hf_xet reads its settings once per process: a process of its own
@pytest.mark.parametrize("api_version", ["1", "2"])
def test_hf_xet_rebuilds_a_file_from_ranged_reconstructions_of_either_api_version(
    xet_hub: LocalHub, cache: Path, api_version: str
) -> None:
    weights = os.urandom(5_000_000)
    xet_hub.create_repo(REPO, {"weights.safetensors": weights})
    xet_hash = xet_hub.xet_hash(REPO, "weights.safetensors")
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        # Files are asked for 1 MB at a time (256 MB by default): terms start and end mid-chunk.
        "HF_XET_RECONSTRUCTION_MIN_RECONSTRUCTION_FETCH_SIZE": "1mb",
        "HF_XET_CLIENT_RECONSTRUCTION_API_VERSION": api_version,
    }
    code = "import sys; from huggingface_hub import hf_hub_download as get; print(get(*sys.argv[1:3], endpoint=sys.argv[3]))"
    done = subprocess.run(
        [sys.executable, "-c", code, REPO, "weights.safetensors", xet_hub.url],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).read_bytes() == weights
    asked = [r for r in xet_hub.requests if r.path == f"/cas/v{api_version}/reconstructions/{xet_hash}"]
    assert len({r.headers["Range"] for r in asked}) > 1  # several parts of the file, each answered on its own


def test_the_http_cas_answers_reconstructions_by_range_and_only_with_a_xet_token(xet_hub: LocalHub) -> None:
    weights = os.urandom(3_000_000)
    xet_hub.create_repo(REPO, {"weights.safetensors": weights})
    xet_hash = xet_hub.xet_hash(REPO, "weights.safetensors")
    route = f"/v1/reconstructions/{xet_hash}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(xet_get(xet_hub, route), timeout=5)
    assert refused.value.code == 401
    auth = f"Bearer {xet_token(xet_hub)}"

    with urllib.request.urlopen(xet_get(xet_hub, route, Authorization=auth), timeout=5) as answer:
        whole = json.loads(answer.read())
    with urllib.request.urlopen(
        xet_get(xet_hub, route, Authorization=auth, Range="bytes=1000000-"), timeout=5
    ) as a:
        tail = json.loads(a.read())
    with pytest.raises(urllib.error.HTTPError) as past_the_end:
        urllib.request.urlopen(xet_get(xet_hub, route, Authorization=auth, Range="bytes=3000000-"), timeout=5)

    assert whole["offset_into_first_range"] == 0
    assert sum(t["unpacked_length"] for t in whole["terms"]) == len(weights)
    # A range starting mid-file starts at the chunk that holds its first byte.
    skipped = len(weights) - sum(t["unpacked_length"] for t in tail["terms"])
    assert skipped + tail["offset_into_first_range"] == 1_000_000
    assert 0 < tail["offset_into_first_range"] < 1 << 17  # within one chunk (at most 128 KiB)
    (xorb,) = {t["hash"] for t in whole["terms"]}
    (fetch,) = whole["fetch_info"][xorb]
    assert fetch["url"] == f"{xet_hub.url}/cas/xorbs/default/{xorb}"
    assert past_the_end.value.code == 416


def test_a_throttled_xorb_counts_what_it_sent_and_sees_the_client_close(xet_hub: LocalHub) -> None:
    xet_hub.create_repo(REPO, {"weights.safetensors": os.urandom(3_000_000)})
    xet_hash = xet_hub.xet_hash(REPO, "weights.safetensors")
    (xorb,) = xet_hub.xorbs_of(xet_hash)
    xet_hub.throttle_xet(200_000, [xorb])

    with urllib.request.urlopen(
        xet_get(xet_hub, f"/xorbs/default/{xorb}", Range="bytes=0-2999999"), timeout=5
    ) as r:
        assert r.status == 206
        first = r.read(100_000)
        wait_for(lambda: xet_hub.xet_responses()[0].sent >= 100_000, 10, "the throttled bytes never came")
    # The client closed the connection after 100 kB: the server stops sending and says why.
    wait_for(lambda: xet_hub.xet_responses()[0].state != "open", 10, "the server never saw the client go")

    (response,) = xet_hub.xet_responses(xet_hash)
    assert (response.state, response.start, response.end) == ("cut", 0, 2_999_999)
    assert len(first) <= response.sent < 3_000_000
    assert xet_hub.xet_bytes_sent(xet_hash) == response.sent


def test_a_stalled_xorb_sends_headers_then_nothing_until_released(xet_hub: LocalHub, cache: Path) -> None:
    weights = os.urandom(3_000_000)
    xet_hub.create_repo(REPO, {"weights.safetensors": weights})
    xet_hash = xet_hub.xet_hash(REPO, "weights.safetensors")
    xet_hub.stall_xet(xet_hub.xorbs_of(xet_hash))
    done: list[str] = []
    download = threading.Thread(
        target=lambda: done.append(
            hf_hub_download(REPO, "weights.safetensors", cache_dir=cache, endpoint=xet_hub.url)
        ),
        daemon=True,
    )
    download.start()

    wait_for(lambda: bool(xet_hub.xet_responses(xet_hash)), 30, "hf_xet never asked for the xorb")
    assert all(r.state == "open" and r.sent == 0 for r in xet_hub.xet_responses(xet_hash)) and not done
    xet_hub.release_xet()
    download.join(timeout=60)

    assert done and Path(done[0]).read_bytes() == weights
    assert all(r.state == "complete" for r in xet_hub.xet_responses(xet_hash))


def test_a_client_that_gives_up_on_a_stalled_xorb_is_seen_gone(xet_hub: LocalHub) -> None:
    xet_hub.create_repo(REPO, {"weights.safetensors": os.urandom(300_000)})
    (xorb,) = xet_hub.xorbs_of(xet_hub.xet_hash(REPO, "weights.safetensors"))
    xet_hub.stall_xet()

    with urllib.request.urlopen(
        xet_get(xet_hub, f"/xorbs/default/{xorb}", Range="bytes=0-99"), timeout=0.3
    ) as r:
        assert r.status == 206  # headers at once, then nothing
        with pytest.raises(TimeoutError):
            r.read()
    wait_for(lambda: xet_hub.xet_responses()[0].state != "open", 10, "the server never saw the client go")

    assert [(r.state, r.sent) for r in xet_hub.xet_responses()] == [("cut", 0)]
