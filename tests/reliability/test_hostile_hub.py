"""A hostile Hub (a mirror, a proxy, a MITM on an http:// endpoint) reaches nothing outside the repo's folder,
cannot point the worker or the web process at other hosts and ports, and cannot hold a download slot or a
preview forever (issue 11, items 1, 7, 8 and 9).

Every test drives the local Hub's hostile switches (devkit/localhub.py) through the real worker (a
Celery process) or the real preview (plan_pull, the Pull page), over HTTP with huggingface_hub.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from models_app.models import DownloadJob, Snapshot
from models_app.services import hub as hub_service
from models_app.services.errors import DownloadError
from models_app.services.plan import plan_pull
from tests.downloads.conftest import resolve_requests, wait_job
from tests.reliability.conftest import repo_dir, settle

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


def cache_root() -> Path:
    return Path(settings.HF_HUB_CACHE)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()) if path.exists() else []


def written_outside(name: str) -> list[Path]:
    """Files named `name*` where "../../../name" lands from a repo's blobs/ or refs/ folder (the cache root's
    parent), and in the cache root itself."""
    return sorted([*cache_root().parent.glob(f"{name}*"), *cache_root().glob(f"{name}*")])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port something listens on: where a hostile redirect points. Nothing may connect to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def contacted(sock: socket.socket) -> bool:
    # The kernel completes a handshake into the backlog without accept(): any connection made is waiting here.
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# --- Item 1: values from the Hub that become paths ------------------------------------------------------------


@pytest.mark.usefixtures("download_worker")
def test_an_etag_that_climbs_out_of_the_cache_writes_nothing_and_fails_integrity(hub, publish) -> None:
    name = f"x-{uuid.uuid4().hex[:8]}"
    repo_id, _ = publish("etag")
    hub.faults.bad_etag(f"../../../{name}")
    try:
        job = wait_job(hub_service.download_model(repo_id), timeout=60)

        assert written_outside(name) == []
        assert (job.state, job.error_code) == ("failed", "integrity"), job.error_message
        assert "the Hub answered an invalid ETag" in job.error_message
        assert files_under(repo_dir(repo_id)) == []
        # Small files come in a batch named by the tree listing (hub_batch), not by this header, so bodies may
        # have been read before the refusal: what matters is above, nothing written outside, nothing kept.
        assert not Snapshot.objects.filter(repository__repo_id=repo_id).exists()
    finally:
        for path in written_outside(name):
            path.unlink()


@pytest.mark.usefixtures("download_worker")
def test_force_does_not_let_a_hostile_etag_overwrite_a_file_outside(hub, publish) -> None:
    victim = cache_root().parent / f"victim-{uuid.uuid4().hex[:8]}"
    victim.write_text("precious")
    repo_id, _ = publish("force")
    try:
        first = wait_job(hub_service.download_model(repo_id), timeout=60)
        assert first.state == "succeeded", first.error_message
        before = files_under(repo_dir(repo_id))
        hub.faults.bad_etag(f"../../../{victim.name}", pattern="*.safetensors")

        job = wait_job(hub_service.download_model(repo_id, force=True), timeout=60)

        assert (job.state, job.error_code) == ("failed", "integrity"), job.error_message
        assert victim.read_text() == "precious"
        assert written_outside(victim.name) == [victim]
        assert files_under(repo_dir(repo_id)) == before  # the verified snapshot is left as it was
    finally:
        for path in written_outside(victim.name):
            path.unlink()


@pytest.mark.usefixtures("download_worker")
def test_a_commit_id_that_is_a_path_is_neither_stored_nor_written_as_a_ref(hub, publish) -> None:
    name = f"y-{uuid.uuid4().hex[:8]}"
    repo_id, _ = publish("commit")
    hub.faults.bad_commit(f"../../../{name}", repo_id)
    try:
        job = wait_job(hub_service.download_model(repo_id), timeout=60)

        assert written_outside(name) == []
        assert job.commit_sha == ""
        assert (job.state, job.error_code) == ("failed", "integrity"), job.error_message
        assert "the Hub answered an invalid commit id" in job.error_message
        assert files_under(repo_dir(repo_id)) == []
    finally:
        for path in written_outside(name):
            path.unlink()


@pytest.mark.usefixtures("download_worker")
def test_a_commit_id_in_the_resolve_headers_that_is_a_path_is_refused(hub, publish) -> None:
    name = f"z-{uuid.uuid4().hex[:8]}"
    repo_id, _ = publish("commithdr")
    hub.faults.bad_commit(f"../../../{name}", repo_id, in_header=True)
    try:
        job = wait_job(hub_service.download_model(repo_id), timeout=60)

        assert (job.state, job.error_code) == ("failed", "integrity"), job.error_message
        assert written_outside(name) == []
        assert files_under(repo_dir(repo_id)) == []
    finally:
        for path in written_outside(name):
            path.unlink()


@pytest.mark.usefixtures("download_worker")
def test_a_tree_listing_whose_lfs_oid_is_a_path_is_refused(hub, publish) -> None:
    """With hf_xet installed, a Xet file's blob is named after the listing's lfs.oid, with no HEAD at all."""
    name = f"w-{uuid.uuid4().hex[:8]}"
    repo_id, _ = publish("tree")
    hub.faults.bad_tree_lfs_oid(f"../../../{name}", pattern="*.safetensors")
    try:
        job = wait_job(hub_service.download_model(repo_id), timeout=60)

        assert written_outside(name) == []
        assert (job.state, job.error_code) == ("failed", "integrity"), job.error_message
        assert "the Hub answered an invalid LFS sha256 in a tree listing" in job.error_message
    finally:
        for path in written_outside(name):
            path.unlink()


def test_the_preview_refuses_a_commit_id_that_is_a_path(hub, publish) -> None:
    repo_id, _ = publish("plancommit")
    hub.faults.bad_commit("../../../p", repo_id)

    with pytest.raises(DownloadError) as info:
        plan_pull(repo_id, "main")

    assert info.value.code == "integrity"
    assert "the Hub answered an invalid commit id" in info.value.message


def test_the_preview_refuses_a_hostile_etag_on_config_json(hub, publish) -> None:
    repo_id, _ = publish("planetag")
    hub.faults.bad_etag("../../../q", pattern="config.json")

    with pytest.raises(DownloadError) as info:
        plan_pull(repo_id, "main")

    assert info.value.code == "integrity"
    assert resolve_requests(hub, repo_id, "GET") == []


# --- Item 8: redirects ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("download_worker")
def test_a_redirect_to_another_loopback_port_is_refused_and_never_contacted(hub, publish, listener) -> None:
    port = listener.getsockname()[1]
    repo_id, _ = publish("redirect")
    hub.faults.redirect(f"http://127.0.0.1:{port}/evil", pattern="*.safetensors")

    job = wait_job(hub_service.download_model(repo_id), timeout=60)

    assert (job.state, job.error_code) == ("failed", "integrity"), job.error_message
    assert "redirect" in job.error_message and "HUB_REDIRECT_HOSTS" in job.error_message
    assert str(port) not in job.error_message
    assert not contacted(listener)
    assert not Snapshot.objects.filter(repository__repo_id=repo_id, status=Snapshot.Status.READY).exists()


def test_the_preview_refuses_redirects_elsewhere_with_one_message_whatever_the_port(
    hub, publish, listener
) -> None:
    """An open and a closed port get the same answer: the preview cannot be used to scan ports."""
    repo_id, _ = publish("planredirect")
    messages = []
    for port in (listener.getsockname()[1], closed_port()):
        hub.faults.clear()
        hub.faults.redirect(f"http://127.0.0.1:{port}/api/x", path=f"/api/models/{repo_id}/*")
        with pytest.raises(DownloadError) as info:
            plan_pull(repo_id, "main")
        assert info.value.code == "integrity"
        assert str(port) not in info.value.message
        messages.append(info.value.message)

    assert messages[0] == messages[1]
    assert not contacted(listener)


def test_a_redirect_to_an_allowed_cdn_host_passes_the_guard() -> None:
    from models_app.services.hub_guard import redirect_allowed

    assert redirect_allowed("https://cdn-lfs-us-1.hf.co/repos/x?sig=1")
    assert redirect_allowed("https://cas-bridge.xethub.hf.co/xet-bridge-us/x")
    assert not redirect_allowed("http://cdn-lfs-us-1.hf.co/repos/x")  # plain http
    assert not redirect_allowed("https://cdn-lfs.hf.co:8443/x")  # another port
    assert not redirect_allowed("https://evil.hf.co.attacker.example/x")
    assert not redirect_allowed("https://127.0.0.1/x")


# --- Item 9: a Hub that trickles its headers --------------------------------------------------------------------


def test_trickled_headers_fail_the_job_at_the_header_deadline(hub, publish, dedicated_worker) -> None:
    dedicated_worker(HUB_HEADER_TIMEOUT="3", DOWNLOAD_MAX_ATTEMPTS="1")
    repo_id, _ = publish("trickle")
    # One byte a second: ~250 s of headers, each byte well inside any read timeout.
    hub.faults.trickle_headers(1.0, pattern="*.safetensors")

    job = settle(hub_service.download_model(repo_id).id, timeout=90)

    assert (job.state, job.error_code) == ("failed", "network"), job.error_message
    assert "HUB_HEADER_TIMEOUT" in job.error_message


@pytest.mark.usefixtures("download_worker")
def test_cancel_works_while_the_worker_waits_for_trickled_headers(hub, publish) -> None:
    repo_id, _ = publish("tricklecancel")
    hub.faults.trickle_headers(1.0, path=f"/api/models/{repo_id}/*")
    job = hub_service.download_model(repo_id)
    wait_job(job, states=("running",), timeout=60)

    def waiting_for_headers() -> bool:
        return any(r.path.startswith(f"/api/models/{repo_id}/") for r in list(hub.requests))

    from devkit.processes import wait_for

    wait_for(waiting_for_headers, 60, "the worker never asked for the model info")
    hub_service.cancel_job(job)

    job = settle(job.id, timeout=60)
    assert job.state == "cancelled", job.error_message


def test_the_preview_has_its_own_deadline(hub, publish, settings) -> None:
    settings.HUB_PREVIEW_TIMEOUT = 3
    repo_id, _ = publish("trickleplan")
    hub.faults.trickle_headers(1.0, path=f"/api/models/{repo_id}/*")

    with pytest.raises(DownloadError) as info:
        plan_pull(repo_id, "main")

    assert info.value.code == "network"
    assert "HUB_PREVIEW_TIMEOUT" in info.value.message


def test_a_trickled_answer_body_fails_the_preview_at_the_request_deadline(hub, publish, settings) -> None:
    settings.HUB_REQUEST_TIMEOUT = 3
    repo_id, _ = publish("trickleinfo")
    # Headers at once, then the model info's ~2 kB body at a byte a second: no read ever times out.
    hub.faults.trickle_body(1.0, path=f"/api/models/{repo_id}/*")

    with pytest.raises(DownloadError) as info:
        plan_pull(repo_id, "main")

    assert info.value.code == "network"
    assert "HUB_REQUEST_TIMEOUT" in info.value.message


def test_a_trickled_answer_body_fails_the_job_at_the_request_deadline(hub, publish, dedicated_worker) -> None:
    dedicated_worker(HUB_REQUEST_TIMEOUT="3", DOWNLOAD_MAX_ATTEMPTS="1")
    repo_id, _ = publish("trickleinfojob")
    hub.faults.trickle_body(1.0, path=f"/api/models/{repo_id}/*")

    job = settle(hub_service.download_model(repo_id).id, timeout=90)

    assert (job.state, job.error_code) == ("failed", "network"), job.error_message
    assert "HUB_REQUEST_TIMEOUT" in job.error_message


# --- Item 7: metadata size and depth ---------------------------------------------------------------------------


def big_config(size: int) -> bytes:
    return json.dumps({"model_type": "llama", "hidden_size": 8, "padding": "x" * size}).encode()


DEEP_CONFIG = b'{"model_type": "llama", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # 40 kB, 20,000 deep


def test_the_preview_refuses_an_oversized_config_before_downloading_it(hub, publish, settings) -> None:
    settings.HUB_METADATA_MAX_BYTES = 64 * 1024
    repo_id, _ = publish("bigplan", extra={"config.json": big_config(200_000)})

    plan = plan_pull(repo_id, "main")

    assert not plan.is_mlx and not plan.can_start
    assert "HUB_METADATA_MAX_BYTES" in plan.mlx_reason
    assert [r for r in resolve_requests(hub, repo_id) if r.path.endswith("/config.json")] == []


def test_the_preview_counts_the_bytes_of_a_config_that_lies_about_its_size(hub, publish, settings) -> None:
    settings.HUB_METADATA_MAX_BYTES = 64 * 1024
    repo_id, _ = publish("lieplan", extra={"config.json": big_config(2_000_000)})
    hub.faults.lie_size(1000, pattern="config.json")

    plan = plan_pull(repo_id, "main")

    assert not plan.is_mlx and "HUB_METADATA_MAX_BYTES" in plan.mlx_reason


def test_the_preview_refuses_a_config_nested_too_deep(hub, publish) -> None:
    repo_id, _ = publish("deepplan", extra={"config.json": DEEP_CONFIG})

    plan = plan_pull(repo_id, "main")

    assert not plan.is_mlx and "nested" in plan.mlx_reason


@pytest.mark.usefixtures("download_worker")
def test_the_worker_refuses_oversized_and_deep_configs(hub, publish) -> None:
    big, _ = publish("bigjob", extra={"config.json": big_config(17 * 1024 * 1024)})
    deep, _ = publish("deepjob", extra={"config.json": DEEP_CONFIG})

    big_job = wait_job(hub_service.download_model(big), timeout=120)
    deep_job = wait_job(hub_service.download_model(deep), timeout=60)

    assert (big_job.state, big_job.error_code) == ("failed", "not_mlx"), big_job.error_message
    assert "HUB_METADATA_MAX_BYTES" in big_job.error_message
    assert resolve_requests(hub, big, "GET") == []
    assert (deep_job.state, deep_job.error_code) == ("failed", "not_mlx"), deep_job.error_message
    assert "nested" in deep_job.error_message


@pytest.mark.usefixtures("download_worker")
def test_the_worker_counts_the_bytes_of_a_config_that_lies_about_its_size(hub, publish) -> None:
    repo_id, _ = publish("liejob", extra={"config.json": big_config(17 * 1024 * 1024)})
    hub.faults.lie_size(1000, pattern="config.json")

    job = wait_job(hub_service.download_model(repo_id), timeout=120)

    assert (job.state, job.error_code) == ("failed", "not_mlx"), job.error_message
    assert "HUB_METADATA_MAX_BYTES" in job.error_message
    assert files_under(repo_dir(repo_id) / "blobs") == []  # the partial file is gone too


def test_reconcile_skips_and_reports_a_repo_whose_config_is_too_deep_or_too_big(
    hub, tmp_path, settings
) -> None:
    from huggingface_hub import snapshot_download

    from models_app.services.reconcile import reconcile_cache
    from tests.cache.conftest import model_files

    root = tmp_path / "hf-cache"
    settings.HF_HUB_CACHE = root
    settings.CACHE_ROOTS = {"default": root}
    settings.HUB_METADATA_MAX_BYTES = 64 * 1024
    ids = {stem: f"test-hostile/{stem}-{uuid.uuid4().hex[:8]}" for stem in ("deep", "big", "fine")}
    hub.create_repo(ids["deep"], model_files("d", **{"config.json": DEEP_CONFIG}))
    hub.create_repo(ids["big"], model_files("b", **{"config.json": big_config(200_000)}))
    fine_sha = hub.create_repo(ids["fine"], model_files("f"))
    for repo_id in ids.values():
        snapshot_download(repo_id, cache_dir=root, endpoint=hub.url, token=False)

    report = reconcile_cache()

    assert report.imported == [f"{ids['fine']}@{fine_sha}"]
    skipped = " | ".join(report.skipped)
    assert ids["deep"] in skipped and "nested" in skipped
    assert ids["big"] in skipped and "HUB_METADATA_MAX_BYTES" in skipped
    assert not DownloadJob.objects.exists()


def test_the_chat_markers_do_not_read_an_oversized_tokenizer_config(tmp_path, settings) -> None:
    """The web process reads tokenizer_config.json for the OpenAI API's tool and reasoning markers: a
    downloaded snapshot's file over the cap is not loaded (a plain-text reply, not a 1 GiB read)."""
    from models_app.openai.parsing import markers_for_path

    settings.HUB_METADATA_MAX_BYTES = 64 * 1024
    template = '{%- if tools %}<tool_call>{"name": ...}</tool_call>{{ tool_call.name }}{%- endif %}'
    added = [
        {"id": 1, "content": "<think>"},
        {"id": 2, "content": "</think>"},
        {"id": 3, "content": "<tool_call>"},
    ]
    for name, padding in (("small", ""), ("big", "x" * 200_000)):
        model_dir = tmp_path / name
        model_dir.mkdir()
        config = {"chat_template": template, "padding": padding}
        (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
        (model_dir / "tokenizer.json").write_text(json.dumps({"added_tokens": added, "model": {"vocab": {}}}))

    assert markers_for_path(tmp_path / "small").has_tool_calling
    assert not markers_for_path(tmp_path / "big").has_tool_calling


def test_a_same_origin_redirect_hop_is_followed_and_the_hop_it_leads_to_is_checked() -> None:
    """The real Hub sends a /resolve HEAD on to /api/resolve-cache/... with headers huggingface_hub ignores;
    an answer it does read (the last hop, or a redirect off the Hub's origin) is checked."""
    from models_app.services.hub_guard import check_response_headers

    url = "https://huggingface.co/org/name/resolve/main/config.json"
    hop = {"location": "/api/resolve-cache/models/org/name/x/config.json", "etag": 'W/"1a-xyz"'}
    check_response_headers("HEAD", hop, status=307, url=url)
    with pytest.raises(DownloadError, match="invalid ETag"):
        check_response_headers("HEAD", {**hop, "location": "https://cdn-lfs.hf.co/x"}, status=302, url=url)
    with pytest.raises(DownloadError, match="invalid commit id"):
        check_response_headers("HEAD", {"x-repo-commit": "../x", "etag": '"' + "a" * 40 + '"'}, url=url)
