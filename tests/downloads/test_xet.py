"""Pulls from a Hub that serves weights through Xet storage (HUB_PROTOCOL.md §9), as the real Hub does:
hf_xet's Rust client fetches the bytes, outside our HTTP transport, into huggingface_hub's shared store."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from huggingface_hub import hf_hub_download
from huggingface_hub.file_download import repo_folder_name

from devkit.processes import wait_for
from models_app.models import DownloadJob, Snapshot
from models_app.services import hub as hub_service
from models_app.services import hub_checks, hub_digest, hub_progress, jobs
from models_app.services.cache_layout import FileRecord
from models_app.services.cleanup import clean_cache
from models_app.services.errors import DownloadCancelled
from models_app.services.hub_progress import JobMonitor
from models_app.services.xet import install_xet_guard
from tests.downloads.conftest import (
    incomplete_files,
    kill_hard,
    repo_dir,
    resolve_requests,
    shared_entry,
    wait_job,
    xet_worker,
)

pytestmark = [pytest.mark.django_db(transaction=True)]

BIG_PART = 20_000_000  # bytes of the big file that show its Xet transfer is under way
XET_RATE = 3_000_000  # bytes per second of a throttled Xet file: a 128 MB file takes 45 s
XET_STARTED = 6_000_000  # bytes of it the CAS sent: its transfer is under way
XET_SHOWN = 4_000_000  # the job's bytes_done past the small files: the big file's progress shows
XORB_MAX = 64 << 20  # hf_xet's largest xorb, the most it fetches in one range


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("transport", ["local", "http"])
def test_a_pull_from_a_xet_hub_goes_through_hf_xet_into_the_shared_store(
    xet_hub, xet_publish, dedicated_worker, tiny_files, alice, transport, request
) -> None:
    if transport == "http":
        request.getfixturevalue("xet_over_http")  # the CAS as the real Hub serves it, rather than a directory
    repo_id, sha = xet_publish()
    xet_worker(dedicated_worker, xet_hub)

    job = wait_job(hub_service.download_model(repo_id, user=alice), timeout=90)

    assert (job.state, job.error_code, job.error_message) == ("succeeded", "", "")
    assert job.bytes_done == job.bytes_total == sum(Path(p).stat().st_size for p in tiny_files.values())
    assert job.files_done == job.files_total == len(tiny_files)
    assert job.snapshot.status == Snapshot.Status.READY
    # The weights never came through an HTTP GET of the file: hf_xet fetched them from the CAS, with the
    # connection the token route gave.
    gets = [r.path.rsplit("/", 1)[-1] for r in resolve_requests(xet_hub, repo_id)]
    assert "model.safetensors" not in gets and "config.json" in gets
    assert any("/xet-read-token/" in r.path for r in xet_hub.requests)
    xet_hash = xet_hub.xet_hash(repo_id, "model.safetensors")
    if transport == "http":
        assert {r.state for r in xet_hub.xet_responses(xet_hash)} == {"complete"}
    # huggingface_hub's shared store holds the bytes once; the repo's blob links to it.
    entry = shared_entry(xet_hash)
    weights = Path(tiny_files["model.safetensors"])
    assert entry.is_file() and sha256(entry) == sha256(weights)
    blob = repo_dir(repo_id) / "blobs" / sha256(weights)
    assert blob.is_symlink() and blob.resolve() == entry.resolve()
    assert repo_dir(repo_id).name in Path(f"{entry}.refs").read_text()
    snapshot_file = repo_dir(repo_id) / "snapshots" / sha / "model.safetensors"
    assert os.path.realpath(snapshot_file) == str(entry.resolve())
    assert incomplete_files(repo_id) == []


def blob_sha256(hub, repo_id: str, path: str) -> str:  # type: ignore[no-untyped-def]
    return hub.repo(repo_id).resolve("main").files[path].blob.sha256


def wait_storage_closed(hub, xet_hash: str, failure: str) -> None:  # type: ignore[no-untyped-def]
    """Until the CAS has seen every response for the file end (sent whole, or closed by the client)."""
    try:
        wait_for(lambda: all(r.state != "open" for r in hub.xet_responses(xet_hash)), 15, failure)
    except TimeoutError:
        raise AssertionError(f"{failure}: {hub.xet_responses(xet_hash)}") from None


def test_cancel_stops_a_xet_transfer_at_once_and_leaves_no_bytes(
    xet_over_http, xet_publish, dedicated_worker, alice
) -> None:
    hub = xet_over_http
    size = 128 << 20
    repo_id, _ = xet_publish("xet-cancel", extra={"big.safetensors": os.urandom(size)})
    big = hub.xet_hash(repo_id, "big.safetensors")
    # The CAS sends the big file's xorbs at a few MB/s: left alone, hf_xet needs most of a minute for them.
    hub.throttle_xet(XET_RATE, hub.xorbs_of(big))
    xet_worker(dedicated_worker, hub)
    job = hub_service.download_model(repo_id, user=alice)
    # The big file is on its way through hf_xet, and the job shows it: it names the file, and its bytes move
    # with what arrives, although hf_xet writes nothing of the file until a whole range (up to a 64 MB xorb) is in.
    wait_for(
        lambda: (
            hub.xet_bytes_sent(big) > XET_STARTED
            and DownloadJob.objects.filter(
                id=job.id, state="running", current_file="big.safetensors", bytes_done__gt=XET_SHOWN
            ).exists()
        ),
        120,
        "the big file never started, or its progress never moved",
        interval=0.02,
    )
    # ...and moved before hf_xet could write any of it: the first range (a whole xorb) has not all arrived yet.
    assert hub.xet_bytes_sent(big) < XORB_MAX, "the progress waited for hf_xet to write"

    hub_service.cancel_job(job, by=alice)
    job = wait_job(job, timeout=60)

    assert (job.state, job.error_code) == ("cancelled", "cancelled")
    # hf_xet let go of the storage: the CAS saw every response of the big file's xorbs end, cut by the client
    # unless it was complete. Had hf_xet gone on, they would stay open far longer than this wait (the throttle).
    wait_storage_closed(hub, big, "hf_xet still fetches after the cancel")
    responses = hub.xet_responses(big)
    assert {r.state for r in responses} <= {"complete", "cut"} and "cut" in {r.state for r in responses}
    sent = hub.xet_bytes_sent(big)
    assert sent < size // 2, f"the CAS sent {sent} of {size} bytes"
    # Nothing of the pull is left: not the big file, nor the files finished before the cancel, nor their
    # shared store entries, nor a snapshot folder for reconcile to import.
    assert not repo_dir(repo_id).exists()
    for path in ("big.safetensors", "model.safetensors", "tokenizer.json"):
        assert not shared_entry(hub.xet_hash(repo_id, path)).exists(), path
    assert not Snapshot.objects.filter(repository__repo_id=repo_id, status=Snapshot.Status.READY).exists()
    # Later: no new request for the big file's storage, no byte more, nothing written back.
    time.sleep(2)
    assert (len(hub.xet_responses(big)), hub.xet_bytes_sent(big)) == (len(responses), sent)
    assert not repo_dir(repo_id).exists()


def test_a_stalled_xet_transfer_fails_network_within_the_stall_timeout(
    xet_over_http, xet_publish, dedicated_worker
) -> None:
    hub = xet_over_http
    repo_id, _ = xet_publish("xet-stall", extra={"big.safetensors": os.urandom(30_000_000)})
    big = hub.xet_hash(repo_id, "big.safetensors")
    hub.stall_xet(hub.xorbs_of(big))  # the big file's storage answers with headers, then nothing
    xet_worker(dedicated_worker, hub, DOWNLOAD_STALL_TIMEOUT="2", DOWNLOAD_MAX_ATTEMPTS="1")
    job = hub_service.download_model(repo_id)
    wait_for(lambda: bool(hub.xet_responses(big)), 60, "hf_xet never asked for the big file's storage")
    # Left alone, hf_xet waits 5 minutes per read (HF_XET_CLIENT_READ_TIMEOUT), then retries: this wait would end.
    job = wait_job(job, timeout=60)

    assert (job.state, job.error_code) == ("failed", "network"), job.error_message
    assert "Xet storage stopped sending data" in job.error_message
    # The abort reached hf_xet's HTTP reads: it closed every stalled connection, none of which sent a byte.
    wait_storage_closed(hub, big, "hf_xet still waits on the stalled storage")
    assert {(r.state, r.sent) for r in hub.xet_responses(big)} == {("cut", 0)}
    assert incomplete_files(repo_id) == []
    assert not Snapshot.objects.filter(repository__repo_id=repo_id, status=Snapshot.Status.READY).exists()


def test_a_corrupt_shared_store_entry_is_removed_and_the_next_pull_fetches_fresh_bytes(
    xet_hub, xet_publish, dedicated_worker, tiny_files
) -> None:
    first_id, _ = xet_publish("xet-first")
    second_id, second_sha = xet_publish("xet-second")  # the same files: both repos link one store entry
    xet_worker(dedicated_worker, xet_hub)
    first = wait_job(hub_service.download_model(first_id), timeout=90)
    assert first.state == "succeeded", first.error_message
    entry = shared_entry(xet_hub.xet_hash(first_id, "model.safetensors"))
    entry.chmod(0o644)
    with entry.open("r+b") as f:  # one flipped byte, same size: bit rot on the local disk
        f.seek(entry.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    second = wait_job(hub_service.download_model(second_id), timeout=90)

    assert (second.state, second.error_code) == ("failed", "integrity")
    assert "model.safetensors" in second.error_message
    assert "shared Xet store entry" in second.error_message and "corrupt" in second.error_message
    assert not entry.exists()
    # The first repo linked the same bad bytes: its snapshot is no longer trusted.
    assert first.snapshot is not None
    first.snapshot.refresh_from_db()
    assert first.snapshot.status == Snapshot.Status.INVALID

    again = wait_job(hub_service.download_model(second_id), timeout=90)
    assert (again.state, again.error_code) == ("succeeded", ""), again.error_message
    weights = Path(tiny_files["model.safetensors"])
    assert sha256(repo_dir(second_id) / "snapshots" / second_sha / "model.safetensors") == sha256(weights)
    assert sha256(entry) == sha256(weights)


def test_with_xet_disabled_the_same_hub_is_pulled_over_http(
    xet_hub, xet_publish, dedicated_worker, tiny_files
) -> None:
    repo_id, sha = xet_publish("xet-off")
    xet_worker(dedicated_worker, xet_hub, HF_HUB_DISABLE_XET="1")

    job = wait_job(hub_service.download_model(repo_id), timeout=90)

    assert (job.state, job.error_code, job.error_message) == ("succeeded", "", "")
    gets = [r.path.rsplit("/", 1)[-1] for r in resolve_requests(xet_hub, repo_id)]
    assert "model.safetensors" in gets  # over HTTP, through the transport guard
    assert not any(f"/{repo_id}/xet-read-token/" in r.path for r in xet_hub.requests)
    assert not shared_entry(xet_hub.xet_hash(repo_id, "model.safetensors")).exists()
    weights = repo_dir(repo_id) / "snapshots" / sha / "model.safetensors"
    assert sha256(weights) == sha256(Path(tiny_files["model.safetensors"]))


def test_a_worker_killed_during_a_xet_transfer_is_reaped_and_a_fresh_worker_completes_the_job(
    xet_hub, xet_publish, dedicated_worker, big_file, settings
) -> None:
    repo_id, sha = xet_publish("xet-sigkill", extra={"big.safetensors": big_file})
    worker = xet_worker(dedicated_worker, xet_hub)
    job = hub_service.download_model(repo_id)
    wait_for(
        lambda: DownloadJob.objects.filter(id=job.id, bytes_done__gt=BIG_PART).exists(),
        120,
        "the big file never started",
        interval=0.02,
    )

    kill_hard(worker)
    later = timezone.now() + timedelta(seconds=settings.DOWNLOAD_HEARTBEAT_TIMEOUT + 5)
    assert jobs.reap_stalled_jobs(now=later) == [job.id]
    # The requeued job's partial files stay until it ends (an HTTP transfer resumes them, hub_resume).

    xet_worker(dedicated_worker, xet_hub)  # the dead process held nothing of the CAS
    job = wait_job(job, timeout=180)
    assert (job.state, job.error_code, job.attempts) == ("succeeded", "", 2), job.error_message
    entry = shared_entry(xet_hub.xet_hash(repo_id, "big.safetensors"))
    assert entry.stat().st_size == big_file.stat().st_size
    assert (repo_dir(repo_id) / "snapshots" / sha / "big.safetensors").resolve() == entry.resolve()
    assert job.snapshot.status == Snapshot.Status.READY  # verified: sha256 of the whole GB
    # hf_xet's partial file of the killed attempt goes with the job (removed just after it is marked done).
    wait_for(lambda: incomplete_files(repo_id) == [], 30, f"partial files left: {incomplete_files(repo_id)}")


def test_a_cleanup_during_a_xet_transfer_leaves_its_files_alone(
    xet_hub, xet_publish, dedicated_worker, big_file
) -> None:
    idle_id, _ = xet_publish("xet-idle", extra={"idle.safetensors": os.urandom(200_000)})
    busy_id, busy_sha = xet_publish("xet-busy", extra={"big.safetensors": big_file})
    xet_worker(dedicated_worker, xet_hub)
    assert wait_job(hub_service.download_model(idle_id), timeout=90).state == "succeeded"
    Snapshot.objects.filter(repository__repo_id=idle_id).update(
        last_used_at=timezone.now() - timedelta(days=90), downloaded_at=timezone.now() - timedelta(days=90)
    )
    idle_entry = shared_entry(xet_hub.xet_hash(idle_id, "idle.safetensors"))
    assert idle_entry.exists()
    job = hub_service.download_model(busy_id)
    wait_for(
        lambda: DownloadJob.objects.filter(id=job.id, bytes_done__gt=BIG_PART).exists(),
        120,
        "the big file never started",
        interval=0.02,
    )

    # The most aggressive policy there is, while hf_xet writes and huggingface_hub publishes store entries.
    plan = clean_cache(max_age=86400, max_size=1, keep_revisions=1, dry_run=False)

    assert {item.repo_id for item in plan.deleted if item.kind == "snapshot"} == {idle_id}
    assert not idle_entry.exists()  # the idle repo's store entry went with it
    job = wait_job(job, timeout=180)
    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    entry = shared_entry(xet_hub.xet_hash(busy_id, "big.safetensors"))
    assert (repo_dir(busy_id) / "snapshots" / busy_sha / "big.safetensors").resolve() == entry.resolve()
    assert entry.stat().st_size == big_file.stat().st_size


def test_a_local_cas_is_followed_only_when_the_settings_allow_it(settings) -> None:  # type: ignore[no-untyped-def]
    """A Hub that is not trusted must not point hf_xet at this machine's files (`local:///...`); an offline
    mirror or the tests' local Hub is allowed one by HUB_XET_LOCAL_CAS."""
    from models_app.services import hub_guard

    settings.HUB_XET_LOCAL_CAS = False
    assert not hub_guard.cas_allowed("local:///var/lib/anything")
    assert not hub_guard.cas_allowed("http://127.0.0.1:9/")
    assert hub_guard.cas_allowed("https://cas-server.xethub.hf.co/")
    settings.HUB_XET_LOCAL_CAS = True
    assert hub_guard.cas_allowed("local:///var/lib/anything")


# --- Hashing while hf_xet writes (hub_digest.GrowingFileHasher) ----------------------------------------------

FOLLOWED_SIZE = 100_000_000  # two xorbs (64 MB at most each): hf_xet writes the first while the second comes


def hashers_of(etag: str) -> list[hub_digest.GrowingFileHasher]:
    with hub_digest._following_lock:
        return [h for h in hub_digest._following if h.path.name.startswith(f"{etag}.")]


def start_guarded_download(hub, repo_id: str, cache: Path) -> tuple[threading.Thread, list[BaseException]]:  # type: ignore[no-untyped-def]
    """hf_hub_download of big.safetensors in a thread, as a job's pull runs it: the Xet guard installed and
    a monitor watching the repo (the caller registers it)."""
    install_xet_guard()
    errors: list[BaseException] = []

    def download() -> None:
        try:
            hf_hub_download(repo_id, "big.safetensors", cache_dir=cache, endpoint=hub.url, token=False)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=download, daemon=True)
    thread.start()
    return thread, errors


def watched(repo_id: str) -> JobMonitor:
    monitor = JobMonitor(job_id=0, task_id="test", repo_id=repo_id, revision="main", owner_id=None)
    hub_progress._register(monitor)  # what start() does, without the watcher thread and its job row
    return monitor


def refuse_reading(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Verification that would read a blob again fails the test: the digest taken in flight must do."""

    def no_read(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("verification read the blob again")

    monkeypatch.setattr(hub_checks, "file_hash", no_read)


def publish_with_the_tail_held(hub, xet_publish, name: str) -> tuple[str, str, str, int]:  # type: ignore[no-untyped-def]
    """big.safetensors over two xorbs or more, all but the first held by the CAS until released: its repo id,
    commit, sha256, and the bytes the first xorb holds."""
    data = os.urandom(FOLLOWED_SIZE)
    repo_id, sha = xet_publish(name, extra={"big.safetensors": data})
    segments = hub.cas.segments(hub.xet_hash(repo_id, "big.safetensors"))
    assert len({s.xorb for s in segments}) >= 2, "the file must span two xorbs"
    first_xorb = segments[0].xorb
    hub.stall_xet({s.xorb for s in segments} - {first_xorb})
    head = sum(s.unpacked for s in segments if s.xorb == first_xorb)
    return repo_id, sha, hashlib.sha256(data).hexdigest(), head


@contextlib.contextmanager
def head_hashed_in_flight(hub, repo_id: str, cache: Path, digest: str, head: int):  # type: ignore[no-untyped-def]
    """The guarded download running, watched by a monitor, once the hasher has hashed the first xorb's bytes
    (the rest still held): yields (monitor, thread, errors); the CAS lets the rest go and the monitor is
    unregistered on the way out."""
    monitor = watched(repo_id)
    try:
        thread, errors = start_guarded_download(hub, repo_id, cache)
        wait_for(
            lambda: any(h.hashed >= head for h in hashers_of(digest)), 60, "the written part was never hashed"
        )
        yield monitor, thread, errors
    finally:
        hub.release_xet()
        hub_progress._unregister(monitor)


def test_a_xet_file_is_hashed_while_hf_xet_writes_it_and_verification_only_waits_for_the_tail(
    xet_over_http, xet_publish, tmp_path, monkeypatch
) -> None:
    hub = xet_over_http
    repo_id, sha, digest, head = publish_with_the_tail_held(hub, xet_publish, "xet-follow")
    # The first xorb is written, and hashed from the file, while the transfer still waits for the rest.
    with head_hashed_in_flight(hub, repo_id, tmp_path, digest, head) as (_, thread, errors):
        assert thread.is_alive() and not errors
        hub.release_xet()
        thread.join(120)
    assert not thread.is_alive() and not errors, errors

    refuse_reading(monkeypatch)
    repo = tmp_path / repo_folder_name(repo_id=repo_id, repo_type="model")
    spec = FileRecord("big.safetensors", FOLLOWED_SIZE, "0" * 40, digest)
    assert hub_checks.verify_files(repo, sha, [spec], just_written=True) == {}


def test_an_aborted_xet_transfer_stops_its_hasher_and_records_nothing(
    xet_over_http, xet_publish, tmp_path
) -> None:
    hub = xet_over_http
    repo_id, _, digest, head = publish_with_the_tail_held(hub, xet_publish, "xet-follow-abort")
    with head_hashed_in_flight(hub, repo_id, tmp_path, digest, head) as (monitor, thread, errors):
        hasher = hashers_of(digest)[0]
        monitor.abort(DownloadCancelled("Cancelled."))  # what a cancel, a stall or the time limit does
        thread.join(60)

    assert not thread.is_alive() and len(errors) == 1 and isinstance(errors[0], DownloadCancelled), errors
    # The hasher let go of the file at once (before the rest could come) and nothing of it stands for a blob.
    assert hasher.done.wait(5) and hasher.cancelled.is_set() and hashers_of(digest) == []
    assert hasher.hashed < FOLLOWED_SIZE
    with hub_digest._lock:
        assert digest not in {recorded for _, _, recorded in hub_digest._records.values()}
    assert not list(tmp_path.rglob("*.incomplete"))


def test_wrong_bytes_written_by_hf_xet_are_caught_by_the_digest_taken_while_it_wrote(
    xet_over_http, xet_publish, tmp_path, monkeypatch
) -> None:
    hub = xet_over_http
    data = os.urandom(FOLLOWED_SIZE)
    repo_id, sha = xet_publish("xet-follow-corrupt", extra={"big.safetensors": data})
    xet_hash = hub.xet_hash(repo_id, "big.safetensors")
    xorb = hub.cas.xorb_path(hub.cas.segments(xet_hash)[0].xorb)
    stored = xorb.read_bytes()
    # One flipped byte in the CAS's copy: hf_xet does not check chunk hashes as it reconstructs (measured),
    # so the file it writes differs from the Hub's sha256 by that byte.
    flipped = bytearray(stored)
    flipped[len(stored) // 3] ^= 0xFF
    xorb.write_bytes(bytes(flipped))
    monitor = watched(repo_id)
    try:
        thread, errors = start_guarded_download(hub, repo_id, tmp_path)
        thread.join(120)
    finally:
        xorb.write_bytes(stored)
        hub_progress._unregister(monitor)
    assert not thread.is_alive() and not errors, errors

    refuse_reading(monkeypatch)  # the digest taken while hf_xet wrote is what catches it
    repo = tmp_path / repo_folder_name(repo_id=repo_id, repo_type="model")
    entry = shared_entry(xet_hash, tmp_path)
    assert entry.is_file() and entry.stat().st_size == FOLLOWED_SIZE
    spec = FileRecord("big.safetensors", FOLLOWED_SIZE, "0" * 40, hashlib.sha256(data).hexdigest())
    problems = hub_checks.verify_files(repo, sha, [spec], just_written=True)

    assert problems["big.safetensors"].startswith("sha256 differs from the Hub's"), problems
    assert not (repo / "snapshots" / sha / "big.safetensors").exists() and not entry.exists()
