"""Private and gated repos, and where a token may never show up."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import redis
from celery.signals import before_task_publish
from django.conf import settings

from models_app.models import DownloadJob, HubCredential
from models_app.services import hub as hub_service
from models_app.services.credentials import create_credential
from tests.downloads.conftest import wait_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("download_worker")]

CANARY = "hf_CanaryToken0123456789abcdefXYZ"


@pytest.fixture
def published_tasks() -> list[dict[str, Any]]:
    """Every task message this process publishes (headers and body), as Celery hands it to the broker."""
    seen: list[dict[str, Any]] = []

    def record(sender: str | None = None, body: Any = None, headers: dict | None = None, **_: Any) -> None:
        seen.append({"task": sender, "body": body, "headers": headers or {}})

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


def redis_dump() -> bytes:
    """Every key and value in the test Redis, Celery bodies base64-decoded: the broker queue, unacked
    messages, results, channel layer groups and messages, the app's own keys."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    out: list[bytes] = []
    for key in client.scan_iter(count=500):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = [client.dump(key) or b""]
        for value in values:
            out.append(value)
            for encoded in re.findall(rb'"body": ?"([A-Za-z0-9+/=]+)"', value):
                out.append(base64.b64decode(encoded))
    return b"\n".join(out)


def test_a_private_repo_needs_a_token_and_the_token_never_leaks(
    hub, publish, alice, download_worker, published_tasks
) -> None:
    repo_id, sha = publish("private", private=True)
    hub.add_token(CANARY, "alice", can_read=[repo_id])

    refused = wait_job(hub_service.download_model(repo_id, user=alice))
    assert (refused.state, refused.error_code) == ("failed", "auth_required")
    assert "token" in refused.error_message

    credential = create_credential(owner=alice, name="hub", token=CANARY)
    assert CANARY not in credential.token_ciphertext and credential.token_last4 == CANARY[-4:]
    hub.faults.throttle(200_000, pattern="model.safetensors")  # ~1 s, to look at Redis mid-download
    job = hub_service.download_model(repo_id, credential=credential, user=alice)
    running = wait_job(job, states=("running",))
    while_running = redis_dump()
    # The scan sees the message being worked on (kombu's unacked hash, body decoded): the check is real.
    assert running.celery_task_id.encode() in while_running and f"[[{job.id}]".encode() in while_running
    job = wait_job(job)
    assert (job.state, job.error_code) == ("succeeded", ""), job.error_message
    assert job.commit_sha == sha
    repository = job.repository
    assert repository.private and repository.owner == alice
    # The worker used the token (the hub saw it), decrypted from the row by id.
    assert any(r.headers.get("Authorization") == f"Bearer {CANARY}" for r in hub.requests)

    # ...and it is nowhere else: task messages carry ids only,
    downloads = [t for t in published_tasks if t["task"] == "downloads.download"]
    assert len(downloads) == 2
    for message in downloads:
        args, kwargs, _ = message["body"]
        assert args in ([refused.id], [job.id]) and kwargs == {}
        assert CANARY not in json.dumps(message, default=str)
    # not in any job row, Redis key or value, nor in the worker's log.
    for row in DownloadJob.objects.values():
        assert CANARY not in json.dumps(row, default=str)
    assert CANARY.encode() not in while_running and CANARY.encode() not in redis_dump()
    assert CANARY not in download_worker.log()
    assert CANARY[3:] not in download_worker.log()
    assert not HubCredential.objects.filter(token_ciphertext__contains=CANARY).exists()


def test_a_token_without_access_is_not_found(hub, publish, alice) -> None:
    repo_id, _ = publish("private", private=True)
    hub.add_token("hf_SomeoneElse000000000000000", "bob", can_read=[])
    credential = create_credential(owner=alice, name="other", token="hf_SomeoneElse000000000000000")

    job = wait_job(hub_service.download_model(repo_id, credential=credential, user=alice))

    assert (job.state, job.error_code) == ("failed", "not_found")
    assert "hf_SomeoneElse" not in job.error_message


def test_a_gated_repo_fails_gated_with_a_link_to_accept_the_licence(hub, publish, alice) -> None:
    from models_app.services.errors import action_for_job

    repo_id, _ = publish("gated", gated=True)

    job = wait_job(hub_service.download_model(repo_id, user=alice))

    assert (job.state, job.error_code) == ("failed", "gated")
    assert f"{settings.HF_ENDPOINT}/{repo_id}" in action_for_job(job)
    assert job.attempts == 1  # never retried
    assert job.repository.gated and job.repository.owner == alice


def test_a_gated_repo_downloads_once_the_licence_is_accepted(hub, publish, alice) -> None:
    repo_id, _ = publish("gated", gated=True)
    hub.add_token("hf_GatedGranted0000000000000", "alice", can_read=[])
    hub.grant_gated(repo_id, "alice")
    credential = create_credential(owner=alice, name="granted", token="hf_GatedGranted0000000000000")

    job = wait_job(hub_service.download_model(repo_id, credential=credential, user=alice))

    assert (job.state, job.error_code) == ("succeeded", "")
