"""Redis killed (-9) and started again, with one download running and two queued, on a PRIVATE redis-server
with its own workers and web server. Redis runs without persistence, as `make run` starts it, so the restart
loses every queued message, every presence key and the channel layer.

Every job still reaches exactly one final state; a duplicate delivery of a download task is a no-op; the
workers and the web server reconnect by themselves (/healthz green again, the inference worker answers).

The reaper notices the lost messages: each sent task leaves a marker in Redis, and a queued job whose marker went
with the old Redis is sent again on the reaper's next pass (it runs every 30 s under beat). The test runs that pass
just past the grace period rather than waiting for beat."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import pytest

from devkit.processes import ROOT, AsgiServer, CeleryWorker, ManagedProcess, wait_for
from devkit.redis_server import RedisServer
from models_app.models import ApiKey, DownloadJob
from tests.downloads.conftest import resolve_requests
from tests.factories import make_snapshot
from tests.reliability.conftest import FINAL, HEARTBEAT_TIMEOUT, incomplete_files

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PADDING = os.urandom(3_000_000)
PADDING_SHA256 = hashlib.sha256(PADDING).hexdigest()


@dataclass
class Stack:
    redis: RedisServer
    env: dict[str, str]
    web: AsgiServer
    downloads: CeleryWorker
    inference: CeleryWorker

    def healthz(self) -> tuple[int, dict]:
        try:
            response = httpx.get(f"{self.web.url}/healthz", timeout=5)
        except httpx.HTTPError as exc:
            return 0, {"error": repr(exc)}
        return response.status_code, response.json()

    def run(self, code: str) -> str:
        """Python in this stack's environment (its Redis), as a `manage.py shell` would run it."""
        script = f"import django\ndjango.setup()\n{code}"
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout


@pytest.fixture
def stack(tmp_path: Path, stack_env, process_log_dir, settings) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    redis = RedisServer(tmp_path / "redis").start()
    # This process checks worker presence in that Redis too (CeleryWorker.wait_ready).
    settings.REDIS_URL = redis.url
    env = {
        **stack_env,
        "REDIS_URL": redis.url,
        "TEST_REDIS_URL": redis.url,
        "DOWNLOAD_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
    }
    tag = f"redis-{redis.port}"
    started: list[ManagedProcess] = []
    try:
        # Constructed together, waited for together: the three start in parallel.
        downloads = CeleryWorker(
            name=f"{tag}-dl", queues="downloads,maintenance", pool="prefork", concurrency=1, env=env,
            log_dir=process_log_dir,
        )  # fmt: skip
        started.append(downloads)
        inference = CeleryWorker(
            name=f"{tag}-inf",
            queues="inference",
            pool="threads",
            concurrency=4,
            env=env,
            log_dir=process_log_dir,
        )
        started.append(inference)
        web = AsgiServer(env=env, log_dir=process_log_dir)
        started.append(web)
        downloads.wait_ready()
        inference.wait_ready()
        web.wait_ready()
        yield Stack(redis, env, web, downloads, inference)
    finally:
        for process in started:
            process.stop()
        redis.stop()


def test_a_redis_restart_loses_no_job_and_everything_reconnects(
    hub, publish, stack: Stack, alice, tiny_model_path
) -> None:
    key = ApiKey.issue(user=alice, name="restart")[1]
    api = httpx.Client(base_url=stack.web.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    running_id, _ = publish("running", extra={"padding.bin": PADDING})
    queued_ids = [publish("queued")[0], publish("queued")[0]]
    hub.faults.throttle(1_000_000, pattern="padding.bin")  # ~3 s: Redis goes away in the middle
    make_snapshot("test/tiny-chat", path=tiny_model_path)

    created = [api.post("/api/v1/pulls", json={"repo_id": r}) for r in [running_id, *queued_ids]]
    assert [r.status_code for r in created] == [201, 201, 201], [r.text for r in created]
    running, *queued = (r.json()["id"] for r in created)
    wait_for(lambda: bool(incomplete_files(running_id, PADDING_SHA256)), 30, "the first pull never started")
    assert stack.healthz()[0] == 200
    assert DownloadJob.objects.get(id=running).state == "running"
    assert list(DownloadJob.objects.filter(id__in=queued).values_list("state", flat=True)) == ["queued"] * 2

    stack.redis.restart()  # kill -9, then a fresh redis-server on the same port: empty

    # The running download does not need Redis: it finishes, once.
    wait_for(lambda: DownloadJob.objects.get(id=running).state in FINAL, 30, "the running job never ended")
    job = DownloadJob.objects.get(id=running)
    assert (job.state, job.error_code, job.attempts) == ("succeeded", "", 1), job.error_message
    # Workers re-announce themselves and the web server reconnects: /healthz is green again by itself.
    wait_for(lambda: stack.healthz()[0] == 200, 30, f"/healthz stayed red: {stack.healthz()}")
    report = stack.healthz()[1]
    assert report["redis"]["ok"] and all(q["ok"] for q in report["queues"].values())

    # The queued jobs' messages went with the old Redis: they are still queued, not lost and not failed.
    assert list(DownloadJob.objects.filter(id__in=queued).values_list("state", flat=True)) == ["queued"] * 2
    # The reaper's next pass sends them again. One of them is also sent twice more (a duplicate delivery): the
    # copies must do nothing.
    stack.run(
        "from datetime import timedelta\n"
        "from django.utils import timezone\n"
        "from models_app.services import jobs\n"
        "later = timezone.now() + jobs.LOST_MESSAGE_GRACE + timedelta(seconds=5)\n"
        f"print(jobs.reap_stalled_jobs(now=later))\n"
        f"jobs.enqueue({queued[0]})\n"
        f"jobs.enqueue({queued[0]})\n"
    )
    for job_id in queued:
        wait_for(lambda j=job_id: DownloadJob.objects.get(id=j).state in FINAL, 30, f"job {job_id} stuck")
    for job_id, repo_id in zip(queued, queued_ids, strict=True):
        job = DownloadJob.objects.get(id=job_id)
        assert (job.state, job.error_code, job.attempts) == ("succeeded", "", 1), job.error_message
        fetched = [r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in resolve_requests(hub, repo_id)]
        assert sorted(fetched) == sorted(hub.repo(repo_id).commits[job.commit_sha].files)  # each file once
    # Both copies of the duplicate were delivered, found the job taken, and did nothing.
    wait_for(
        lambda: stack.downloads.log().count(f"download job {queued[0]} is succeeded") == 2,
        15,
        "the duplicate deliveries were not seen",
    )
    assert DownloadJob.objects.count() == 3

    # The inference worker's consumer reconnected too, and the web server's channel layer with it.
    reply = api.post(
        "/v1/chat/completions",
        json={"model": "test/tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert json.loads(reply.text)["usage"]["completion_tokens"] == 4
