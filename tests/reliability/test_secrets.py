"""A canary Hub token, planted through the API like a user would, goes through the happy path (a private pull
with the stored credential) and every error path (401, 403 gated, 404, a network error, an integrity error,
a refused token check) with DEBUG on everywhere, and turns up nowhere: not in a log (worker, web server,
this process), a Redis key or value, a Celery task message, a database column, an API response, an SSE event,
a websocket frame, a page or an admin page. Stored encrypted; readable after a key rotation.

Also: a missing CREDENTIALS_KEY stops start-up with a clear message
(tests/foundation/test_production_settings.py::test_a_missing_credentials_key_stops_start_up_with_a_clear_message),
and `check --deploy` passes with production values
(tests/foundation/test_production_settings.py::test_check_deploy_passes_with_production_values)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import string
import threading
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from celery.signals import before_task_publish
from cryptography.fernet import Fernet
from django.db import connection
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from devkit.processes import AsgiServer, wait_for
from models_app.models import ApiKey, DownloadJob, HubCredential
from models_app.services import credentials
from models_app.services import hub as hub_service
from models_app.services.updates import check_updates
from tests.chat.test_chat_live import log_in
from tests.downloads.conftest import wait_job
from tests.downloads.test_access import redis_dump

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

OLD_KEY, NEW_KEY = Fernet.generate_key().decode(), Fernet.generate_key().decode()
# Everything huggingface_hub, Django and Celery can say: DEBUG, debug log level, and every HTTP request
# logged by huggingface_hub as a curl command.
LOUD = {"DEBUG": "1", "LOG_LEVEL": "DEBUG", "HF_DEBUG": "1", "HF_HUB_VERBOSITY": "debug"}


def new_canary() -> str:
    return "hf_CANARY" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))


def leaks(canary: str, text: str | bytes) -> bool:
    """The token, or its secret part (a redaction that kept the hf_ prefix only), anywhere in `text`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return canary in text or canary[3:] in text


class FrameRecorder(threading.Thread):
    """A browser tab on the Downloads page: every raw websocket frame it receives."""

    def __init__(self, url: str, origin: str, cookie: str) -> None:
        super().__init__(daemon=True)
        self.url, self.origin, self.cookie = url, origin, cookie
        self.frames: list[str] = []
        self.connected = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        async with connect(self.url, origin=self.origin, additional_headers={"Cookie": self.cookie}) as ws:
            self.connected.set()
            with contextlib.suppress(ConnectionClosed):  # the server stops at teardown
                while not self.done.is_set():
                    with contextlib.suppress(TimeoutError):
                        self.frames.append(str(await asyncio.wait_for(ws.recv(), 0.2)))

    def stop(self) -> list[str]:
        self.done.set()
        self.join(10)
        return self.frames


@pytest.fixture
def loud_server(stack_env, process_log_dir) -> Iterator[AsgiServer]:  # type: ignore[no-untyped-def]
    """The web server with DEBUG on, storing tokens with the OLD key."""
    server = AsgiServer(env={**stack_env, **LOUD, "CREDENTIALS_KEY": OLD_KEY}, log_dir=process_log_dir)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture
def published_tasks() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def record(sender: str | None = None, body: Any = None, headers: dict | None = None, **_: Any) -> None:
        seen.append({"task": sender, "body": body, "headers": headers or {}})

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


def database_text() -> str:
    """Every row of every table, as text (SQLite and PostgreSQL alike)."""
    out = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            out.append(f"{table}: {cursor.fetchall()!r}")
    return "\n".join(out)


def test_a_hub_token_never_leaks(
    hub, publish, alice, staff, dedicated_worker, loud_server, published_tasks, settings, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    settings.DEBUG = True
    settings.CREDENTIALS_KEYS = [NEW_KEY, OLD_KEY]  # rotation under way: the new key first, the old one kept
    canary = new_canary()
    worker = dedicated_worker(**LOUD, CREDENTIALS_KEY=f"{NEW_KEY},{OLD_KEY}", DOWNLOAD_MAX_ATTEMPTS="1")
    key = ApiKey.issue(user=alice, name="canary")[1]
    api = httpx.Client(base_url=loud_server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    responses: list[httpx.Response] = []

    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = api.request(method, path, **kwargs)
        responses.append(response)
        return response

    ws_url = loud_server.url.replace("http://", "ws://") + "/ws/downloads/"
    tabs = []
    for user in ("alice", "root"):
        jar = log_in(loud_server.url, user, f"{user}-password")
        tab = FrameRecorder(ws_url, loud_server.url, "; ".join(f"{c.name}={c.value}" for c in jar))
        tab.start()
        assert tab.connected.wait(10)
        tabs.append(tab)

    readable, _ = publish("canary-ok", private=True)
    unknown_token, _ = publish("canary-401", private=True)
    unreadable, _ = publish("canary-404", private=True)
    gated, _ = publish("canary-gated", gated=True)
    flaky, _ = publish("canary-net", private=True)
    corrupt, _ = publish("canary-bad", private=True)

    # The token enters through the API (and once more, refused as a duplicate name)...
    created = call("POST", "/api/v1/credentials", json={"name": "hub", "token": canary})
    assert created.status_code == 201, created.text
    assert call("POST", "/api/v1/credentials", json={"name": "hub", "token": canary}).status_code == 409
    page = Client()
    page.force_login(alice)
    duplicate = page.post("/settings/credentials/", {"name": "hub", "token": canary})
    assert duplicate.status_code == 400 and b"already have" in duplicate.content
    assert not leaks(canary, duplicate.content)
    credential = HubCredential.objects.get(id=created.json()["id"])
    stored = credential.token_ciphertext
    assert not leaks(canary, stored) and Fernet(OLD_KEY).decrypt(stored.encode()).decode() == canary

    # ...is refused by the Hub, which does not know it yet: 401 on a check and on a private pull.
    assert call("POST", f"/api/v1/credentials/{credential.id}/test").json()["ok"] is False
    refused = wait_job(hub_service.download_model(unknown_token, credential=credential, user=alice))
    assert refused.state == "failed" and refused.error_code in ("auth_required", "not_found")

    hub.add_token(canary, "alice", can_read=[readable, flaky, corrupt])
    assert call("POST", f"/api/v1/credentials/{credential.id}/test").json()["ok"] is True
    hub.faults.throttle(200_000, pattern="model.safetensors", times=1)  # the happy pull lasts ~1 s
    happy = hub_service.download_model(readable, credential=credential, user=alice)
    wait_for(
        lambda: DownloadJob.objects.get(id=happy.id).state != "queued", 30, "the happy pull never started"
    )
    mid_download_redis = redis_dump()  # the task message being worked on is in Redis now
    assert wait_job(happy).state == "succeeded"
    hub.faults.drop_after(0, pattern="model.safetensors", times=None, reset=True)
    network = wait_job(hub_service.download_model(flaky, credential=credential, user=alice))
    hub.faults.clear()
    hub.faults.wrong_bytes(pattern="model.safetensors")
    integrity = wait_job(hub_service.download_model(corrupt, credential=credential, user=alice))
    hub.faults.clear()
    not_found = wait_job(hub_service.download_model(unreadable, credential=credential, user=alice))
    gate = wait_job(hub_service.download_model(gated, credential=credential, user=alice))
    outcomes = {j.error_code for j in (network, integrity, not_found, gate)}
    assert outcomes == {"network", "integrity", "not_found", "gated"}, [
        j.error_message for j in (network, integrity)
    ]
    # The worker really used the token (decrypted with the old key, which it still has), on every path.
    assert sum(r.headers.get("Authorization") == f"Bearer {canary}" for r in hub.requests) >= 10

    # The key rotation: re-encrypted with the new key, still readable, and the worker still pulls with it.
    assert credentials.rotate_credentials() == 1
    credential.refresh_from_db()
    assert credential.token_ciphertext != stored
    settings.CREDENTIALS_KEYS = [NEW_KEY]
    assert credentials.credential_token(credential) == canary
    assert (
        wait_job(hub_service.download_model(readable, credential=credential, user=alice, force=True)).state
        == "succeeded"
    )
    check_updates(repo_ids=[readable])  # in this process: the update check uses the stored credential too

    # Everything a user, a script or an admin can read.
    jobs = list(DownloadJob.objects.values_list("id", flat=True))
    for path in ["/api/v1/credentials", f"/api/v1/credentials/{credential.id}", "/api/v1/pulls"]:
        assert call("GET", path).status_code == 200
    for job_id in jobs:
        assert call("GET", f"/api/v1/pulls/{job_id}").status_code == 200
        assert (
            call("GET", f"/api/v1/pulls/{job_id}/events", headers={"Accept": "text/event-stream"}).status_code
            == 200
        )
    admin = Client()
    admin.force_login(staff)
    pages = [
        admin.get(url)
        for url in [
            "/admin/models_app/hubcredential/",
            f"/admin/models_app/hubcredential/{credential.id}/change/",
            "/admin/models_app/downloadjob/",
            *[f"/admin/models_app/downloadjob/{job_id}/change/" for job_id in jobs],
            "/admin/models_app/repository/",
        ]
    ] + [page.get("/settings/"), page.get("/downloads/"), page.get("/models/")]
    assert all(p.status_code == 200 for p in pages), [p.status_code for p in pages]
    frames = [frame for tab in tabs for frame in tab.stop()]

    # ...and the token is in none of it.
    assert any("download.state" in f and "integrity" in f for f in frames)  # the frames are real
    for frame in frames:
        assert not leaks(canary, frame), frame
    for response in responses:
        assert not leaks(canary, response.content), (response.request.url, response.text[:500])
    for response in pages:
        assert not leaks(canary, response.content), response.content[:500]
    for message in published_tasks:
        assert not leaks(canary, json.dumps(message, default=str)), message
    assert len([m for m in published_tasks if m["task"] == "downloads.download"]) == 7
    assert not leaks(canary, mid_download_redis) and f"[[{happy.id}]".encode() in mid_download_redis
    assert not leaks(canary, redis_dump())
    assert not leaks(canary, database_text())
    worker_log, web_log = worker.log(), loud_server.log()
    assert "<TOKEN>" in worker_log and "DEBUG" in web_log  # the loud logging was on, the header masked
    assert not leaks(canary, worker_log)
    assert not leaks(canary, web_log)
    assert not leaks(canary, caplog.text)
    for job in DownloadJob.objects.exclude(error_message=""):
        assert job.error_message and not leaks(canary, job.error_message)
