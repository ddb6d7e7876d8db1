"""The job state machine in-process: claims, duplicate deliveries, the reaper, enqueue failures, progress."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from models_app.models import DownloadJob, Repository
from models_app.services import hub as hub_service
from models_app.services import jobs

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(**fields: Any) -> DownloadJob:
    repo, _ = Repository.objects.get_or_create(repo_id="test-dl/state-machine")
    return DownloadJob.objects.create(repository=repo, **{"node": settings.NODE_NAME, **fields})


def test_a_duplicate_delivery_of_a_finished_job_does_nothing() -> None:
    job = make_job(state="succeeded", attempts=1, finished_at=timezone.now())
    assert jobs.claim(job.id, task_id="dup", worker_name="w") is None
    job.refresh_from_db()
    assert (job.state, job.attempts, job.celery_task_id) == ("succeeded", 1, "")


def test_a_job_held_by_a_live_worker_is_never_taken() -> None:
    job = make_job(
        state="running", attempts=1, celery_task_id="first", worker="alive", heartbeat_at=timezone.now()
    )
    assert jobs.claim(job.id, task_id="second", worker_name="other") is None
    job.refresh_from_db()
    assert (job.celery_task_id, job.worker, job.attempts) == ("first", "alive", 1)


def test_a_redelivery_takes_over_a_job_whose_worker_went_silent() -> None:
    old = timezone.now() - timedelta(seconds=settings.DOWNLOAD_HEARTBEAT_TIMEOUT + 1)
    job = make_job(state="running", attempts=1, celery_task_id="first", worker="dead", heartbeat_at=old)
    claimed = jobs.claim(job.id, task_id="second", worker_name="fresh")
    assert claimed is not None and (claimed.state, claimed.attempts, claimed.worker) == (
        "running",
        2,
        "fresh",
    )
    # Only one of two racing deliveries wins.
    assert jobs.claim(job.id, task_id="third", worker_name="also") is None


def a_pid_that_is_gone() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: no process has this pid any more
    return child.pid


def test_a_redelivery_takes_over_at_once_a_job_whose_process_here_is_gone() -> None:
    job = make_job(
        state="running", attempts=1, celery_task_id="first", worker="killed", heartbeat_at=timezone.now(),
        owner_host=jobs.this_host(), owner_pid=a_pid_that_is_gone(),
    )  # fmt: skip
    claimed = jobs.claim(job.id, task_id="first", worker_name="fresh")
    assert claimed is not None
    assert (claimed.state, claimed.attempts, claimed.owner_pid) == ("running", 2, os.getpid())
    assert "died" in claimed.error_message and "Resuming" in claimed.error_message


def test_a_live_process_or_one_on_another_machine_keeps_its_job() -> None:
    now = timezone.now()
    alive = make_job(
        state="running", attempts=1, celery_task_id="a", heartbeat_at=now,
        owner_host=jobs.this_host(), owner_pid=os.getppid(),
    )  # fmt: skip
    assert jobs.claim(alive.id, task_id="a", worker_name="other") is None
    alive.delete()
    # Its pid means nothing here: only its heartbeat can tell.
    elsewhere = make_job(
        state="running", attempts=1, celery_task_id="b", heartbeat_at=now,
        owner_host="another-machine", owner_pid=a_pid_that_is_gone(),
    )  # fmt: skip
    assert jobs.claim(elsewhere.id, task_id="b", worker_name="other") is None
    assert jobs.reap_stalled_jobs() == []
    assert DownloadJob.objects.get(id=elsewhere.id).attempts == 1


def test_a_dead_process_job_without_attempts_left_fails_at_once() -> None:
    job = make_job(
        state="running", attempts=settings.DOWNLOAD_MAX_ATTEMPTS, celery_task_id="last",
        heartbeat_at=timezone.now(), owner_host=jobs.this_host(), owner_pid=a_pid_that_is_gone(),
    )  # fmt: skip
    assert jobs.claim(job.id, task_id="last", worker_name="fresh") is None
    job.refresh_from_db()
    assert (job.state, job.error_code) == ("failed", "network")
    assert "died" in job.error_message and "Gave up" in job.error_message


def test_the_reaper_requeues_at_once_a_job_whose_process_here_is_gone(private_queue) -> None:
    job = make_job(
        state="running", attempts=1, celery_task_id="first", heartbeat_at=timezone.now(),
        owner_host=jobs.this_host(), owner_pid=a_pid_that_is_gone(),
    )  # fmt: skip
    assert jobs.reap_stalled_jobs() == [job.id]
    job.refresh_from_db()
    assert (job.state, job.owner_pid, job.owner_host) == ("queued", None, "")
    assert "died" in job.error_message


def test_only_the_owning_task_can_finish_a_job() -> None:
    job = make_job()
    jobs.claim(job.id, task_id="mine", worker_name="w")
    from models_app.services.errors import DownloadError

    assert not jobs.fail(job.id, task_id="zombie", error=DownloadError("network", "x"))
    assert jobs.fail(job.id, task_id="mine", error=DownloadError("network", "lost"))
    assert not jobs.fail(job.id, task_id="mine", error=DownloadError("integrity", "again"))
    job.refresh_from_db()
    assert (job.state, job.error_code, job.error_message) == ("failed", "network", "lost")


def test_the_reaper_fails_a_silent_job_that_used_all_its_attempts() -> None:
    old = timezone.now() - timedelta(seconds=settings.DOWNLOAD_HEARTBEAT_TIMEOUT + 1)
    spent = make_job(state="running", attempts=settings.DOWNLOAD_MAX_ATTEMPTS, heartbeat_at=old, worker="w1")
    assert jobs.reap_stalled_jobs() == [spent.id]
    spent.refresh_from_db()
    assert (spent.state, spent.error_code) == ("failed", "network")
    assert "stopped responding" in spent.error_message and spent.finished_at


def test_the_reaper_cancels_a_silent_job_that_was_being_cancelled() -> None:
    old = timezone.now() - timedelta(seconds=settings.DOWNLOAD_HEARTBEAT_TIMEOUT + 1)
    job = make_job(state="running", attempts=1, heartbeat_at=old, cancel_requested=True)
    assert jobs.reap_stalled_jobs() == [job.id]
    job.refresh_from_db()
    assert job.state == "cancelled"


def test_cancelling_a_job_whose_worker_is_dead_ends_it_at_once() -> None:
    old = timezone.now() - timedelta(seconds=settings.DOWNLOAD_HEARTBEAT_TIMEOUT + 1)
    job = make_job(state="running", attempts=1, heartbeat_at=old)
    job = hub_service.cancel_job(job)
    assert job.state == "cancelled"


def test_the_reaper_sends_a_forgotten_queued_job_again(private_queue) -> None:
    long_ago = timezone.now() - jobs.QUEUED_RESEND_AFTER - timedelta(minutes=1)
    job = make_job(celery_task_id="lost-with-redis", enqueued_at=long_ago)
    assert jobs.reap_stalled_jobs() == [job.id]
    job.refresh_from_db()
    assert job.state == "queued" and job.celery_task_id != "lost-with-redis" and job.enqueued_at > long_ago


def test_a_broker_that_refuses_the_task_fails_the_job_clearly(hub, monkeypatch) -> None:
    def refuse(*_a: Any, **_k: Any) -> None:
        raise ConnectionRefusedError("redis is down")

    monkeypatch.setattr(jobs, "enqueue", refuse)
    job = hub_service.download_model("test-dl/nobody-home")
    job.refresh_from_db()
    assert (job.state, job.error_code) == ("failed", "network")
    assert "could not queue" in job.error_message.lower()


def test_retry_makes_a_new_job_and_returns_an_active_one_as_is(private_queue) -> None:
    failed = make_job(state="failed", error_code="network", finished_at=timezone.now())
    retried = hub_service.retry_job(failed)
    assert retried.id != failed.id and retried.state == "queued" and retried.revision == failed.revision
    assert hub_service.retry_job(retried).id == retried.id


def test_progress_is_published_at_most_5_times_and_written_at_most_once_a_second(
    hub, publish, private_queue, monkeypatch
) -> None:
    from models_app.services import hub_progress

    published: list[tuple[float, dict]] = []
    writes: list[float] = []
    real_heartbeat = jobs.heartbeat
    monkeypatch.setattr(
        hub_progress,
        "publish_download",
        lambda payload, owner_id: published.append((time.monotonic(), dict(payload))),
    )

    def counting_heartbeat(*args: Any, **kwargs: Any) -> bool:
        writes.append(time.monotonic())
        return real_heartbeat(*args, **kwargs)

    monkeypatch.setattr(jobs, "heartbeat", counting_heartbeat)
    repo_id, _ = publish("progress", extra={"padding.bin": os.urandom(4_000_000)})
    hub.faults.throttle(1_600_000, pattern="padding.bin")  # 2.5 s
    job = hub_service.download_model(repo_id)

    hub_service.run_download(job.id, task_id="in-process", worker_name="pytest")

    job.refresh_from_db()
    assert job.state == "succeeded"
    progress = [p for _, p in published if p["type"] == "download.progress"]
    times = [t for t, p in published if p["type"] == "download.progress"]
    assert len(progress) >= 5
    for i, t in enumerate(times):  # any one-second window
        assert sum(1 for u in times[i:] if u - t < 1.0) <= 6
    for i, t in enumerate(writes):
        assert sum(1 for u in writes[i:] if u - t < 1.0) <= 2
    middle = progress[len(progress) // 2]
    assert middle["bytes_total"] == job.bytes_total and 0 < middle["bytes_done"] < job.bytes_total
    assert middle["speed_bps"] > 0 and middle["eta_seconds"] is not None and 0 < middle["percent"] < 100
    assert any(p["current_file"] == "padding.bin" for p in progress)
    assert [p["bytes_done"] for p in progress] == sorted(p["bytes_done"] for p in progress)


def test_a_job_for_another_node_is_sent_back_not_downloaded_here(private_queue) -> None:
    job = make_job(node="another-machine", celery_task_id="first")
    assert jobs.claim(job.id, task_id="first", worker_name="here") is None
    job.refresh_from_db()
    assert (job.state, job.attempts) == ("queued", 0) and job.celery_task_id != "first"
