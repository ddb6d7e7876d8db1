"""Two complete machines on one: each node has its own NODE_NAME, its own HF cache and its own download and
inference workers (the queues `manage.py runstack --workers-only` gives them); they share the database and Redis;
one web server (uvicorn, a third NODE_NAME with none of the files) serves them both.

A model is pulled on each through the web server's REST API and the local Hub; both are listed by `/v1/models`
and answered through the web server's chat websocket and its OpenAI API (the real openai SDK), each by a worker
of the machine that holds it. A third model, pulled on both, is answered by the machine that has it loaded,
whichever copy the chat names. Then one machine's workers are SIGKILLed: its model is refused at once, naming
the machine (the web server's pickup timeout is set to ten minutes here, so an answer that waited for it would
never come within the test's wait), while the other machine keeps answering. Its workers start again and its
model is answered again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import redis
from django.conf import settings
from websockets.asyncio.client import connect

from dashboard.stack import plan
from devkit.processes import AsgiServer, CeleryWorker, child_env, start_worker, wait_for
from models_app.models import ApiKey, DownloadJob, Snapshot, Usage
from models_app.services import inference
from models_app.services import redis as app_redis
from tests.chat.test_chat_live import log_in

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


@dataclass
class Node:
    name: str
    cache: Path
    env: dict[str, str]
    log_dir: Path
    downloads: CeleryWorker | None = None
    inference: CeleryWorker | None = None

    def start(self) -> Node:
        # The queues `runstack --workers-only` gives a further machine's workers: the shared ones and its own.
        queues = {
            s.name: s.argv[s.argv.index("-Q") + 1]
            for s in plan(host="", port=0, node=self.name, workers_only=True)
        }
        assert queues == {
            "downloads": f"downloads,maintenance,node.{self.name}",
            "inference": f"inference,inference.{self.name}",
        }
        self.downloads = start_worker(
            name=f"dl-{self.name}",
            queues=queues["downloads"],
            concurrency=1,
            env=self.env,
            log_dir=self.log_dir,
        )
        self.inference = start_worker(
            name=f"inf-{self.name}",
            queues=queues["inference"],
            pool="solo",
            env=self.env,
            log_dir=self.log_dir,
        )
        return self

    @property
    def workers(self) -> list[CeleryWorker]:
        return [w for w in (self.downloads, self.inference) if w is not None]

    def kill(self) -> None:
        """kill -9 of every worker process of the machine (pool children included), no goodbye."""
        for worker in self.workers:
            worker.kill(signal.SIGKILL)
            worker.stop()  # reaps it, and its process group's leftovers

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def cluster(hub, process_log_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:6]
    nodes: dict[str, Node] = {}
    for letter in ("a", "b"):
        name = f"node-{letter}-{tag}"
        cache = tmp_path / f"{letter}-hf-cache"
        cache.mkdir()
        env = child_env(HF_ENDPOINT=hub.url, NODE_NAME=name, HF_HUB_CACHE=str(cache))
        nodes[letter] = Node(name=name, cache=cache, env=env, log_dir=process_log_dir)
    web_env = child_env(
        HF_ENDPOINT=hub.url,
        NODE_NAME=f"web-{tag}",
        # An answer that waited for a pickup timeout would not come within any wait of this test.
        INFERENCE_PICKUP_TIMEOUT="600",
    )
    web = AsgiServer(env=web_env, log_dir=process_log_dir)
    try:
        for node in nodes.values():
            node.start()
        web.wait_ready()
        yield {"web": web, **nodes}
    finally:
        web.stop()
        for node in nodes.values():
            node.stop()


def pull(web: AsgiServer, key: str, repo_id: str, node: Node) -> Snapshot:
    response = httpx.post(
        f"{web.url}/api/v1/pulls",
        headers={"Authorization": f"Bearer {key}"},
        json={"repo_id": repo_id, "node": node.name},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    final = tuple(DownloadJob.FINAL_STATES)
    wait_for(lambda: DownloadJob.objects.filter(id=job_id, state__in=final).exists(), 120, f"pull {job_id}")
    job = DownloadJob.objects.get(id=job_id)
    assert job.state == DownloadJob.State.SUCCEEDED, (job.error_code, job.error_message)
    return Snapshot.objects.select_related("repository").get(repository__repo_id=repo_id, node=node.name)


async def chat_frames(web: AsgiServer, cookie: str, snapshot_id: int) -> list[dict[str, Any]]:
    """One message on the chat page's websocket, through the web server: its frames up to done or error."""
    url = web.url.replace("http://", "ws://") + "/ws/chat/"
    async with connect(url, origin=web.url, additional_headers={"Cookie": cookie}) as ws:
        request = {"content": "hello, machine", "snapshot_id": snapshot_id, "options": {"max_tokens": 8}}
        await ws.send(json.dumps({"type": "chat.send", **request}))
        frames: list[dict[str, Any]] = []
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=90))
            if frame["type"] == "chat.queued":
                continue
            frames.append(frame)
            if frame["type"] in ("chat.done", "chat.error"):
                return frames


def taken_by(request_id: str) -> str:
    """The Celery hostname of the inference worker that took the request (it says so in Redis)."""
    return app_redis.client().get(inference.picked_key(request_id)) or ""


def answered_on_the_page_by(frames: list[dict[str, Any]], node: Node) -> None:
    assert [f["type"] for f in frames][:2] == ["chat.accepted", "chat.started"], frames
    assert frames[-1]["type"] == "chat.done" and frames[-1]["usage"]["completion_tokens"] == 8
    assert taken_by(frames[0]["request_id"]) == node.inference.hostname  # type: ignore[union-attr]


def answered_by_the_api(client: openai.OpenAI, repo_id: str, node: Node) -> None:
    before = Usage.objects.filter(source="api").count()
    completion = client.chat.completions.create(
        model=repo_id, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
    )
    assert completion.choices[0].message.content and completion.usage.completion_tokens == 6
    stream = client.chat.completions.create(
        model=repo_id, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    wait_for(lambda: Usage.objects.filter(source="api").count() >= before + 2, 30, "usage rows of the API")
    rows = Usage.objects.filter(source="api").order_by("-id")[:2].values_list("request_id", "snapshot__node")
    assert {(taken_by(str(request_id)), where) for request_id, where in rows} == {
        (node.inference.hostname, node.name)  # type: ignore[union-attr]
    }


def loaded_on(node: Node) -> set[int]:
    """The snapshot ids the machine's inference worker reports loaded in its heartbeat."""
    raw = redis.Redis.from_url(settings.REDIS_URL).get(node.inference.presence_key())  # type: ignore[union-attr]
    extra = json.loads(raw).get("extra", {}) if raw else {}
    return {m["snapshot_id"] for m in extra.get("loaded_models", [])}


def presence_gone(node: Node) -> bool:
    client = redis.Redis.from_url(settings.REDIS_URL)
    return not any(client.exists(w.presence_key()) for w in node.workers)


def test_two_machines_serve_their_models_through_one_web_server_and_one_going_down_is_named_at_once(
    cluster: dict[str, Any], alice, publish
) -> None:  # type: ignore[no-untyped-def]
    web: AsgiServer = cluster["web"]
    a: Node = cluster["a"]
    b: Node = cluster["b"]
    key = ApiKey.issue(user=alice, name="two-nodes")[1]
    client = openai.OpenAI(base_url=f"{web.url}/v1", api_key=key, max_retries=0, timeout=90)
    cookie = "; ".join(f"{c.name}={c.value}" for c in log_in(web.url, "alice", "alice-password"))

    on_a = pull(web, key, publish("on-a")[0], a)
    on_b = pull(web, key, publish("on-b")[0], b)

    # Each model is in its own machine's cache, and nowhere on the web server's node; what the API needs about
    # it was written into its row by the worker that has the files.
    for snapshot, node in ((on_a, a), (on_b, b)):
        assert snapshot.status == Snapshot.Status.READY
        assert Path(snapshot.path).is_relative_to(node.cache)
        assert snapshot.markers is not None and snapshot.context_length
    listed = {m.id for m in client.models.list().data}
    assert {on_a.repository.repo_id, on_b.repository.repo_id} <= listed

    answered_on_the_page_by(asyncio.run(chat_frames(web, cookie, on_a.id)), a)
    answered_on_the_page_by(asyncio.run(chat_frames(web, cookie, on_b.id)), b)
    answered_by_the_api(client, on_a.repository.repo_id, a)
    answered_by_the_api(client, on_b.repository.repo_id, b)

    # One model on both machines: the first chat loads it on one of them (the less busy, as their heartbeats
    # said a moment ago); from then on a chat that names the other machine's copy is answered by the machine
    # that has it loaded, which needs no load.
    repo_id = publish("on-both")[0]
    copies = {a.name: pull(web, key, repo_id, a), b.name: pull(web, key, repo_id, b)}
    assert copies[a.name].commit_sha == copies[b.name].commit_sha
    first = asyncio.run(chat_frames(web, cookie, copies[a.name].id))
    loader, other = (a, b) if taken_by(first[0]["request_id"]) == a.inference.hostname else (b, a)  # type: ignore[union-attr]
    answered_on_the_page_by(first, loader)
    wait_for(lambda: copies[loader.name].id in loaded_on(loader), 30, "the heartbeat never showed it loaded")
    assert copies[other.name].id not in loaded_on(other)
    answered_on_the_page_by(asyncio.run(chat_frames(web, cookie, copies[other.name].id)), loader)
    answered_by_the_api(client, repo_id, loader)
    assert copies[other.name].id not in loaded_on(other)

    # Machine B goes away without a word. It counts as down once its workers' presence has expired.
    b.kill()
    wait_for(lambda: presence_gone(b), 30, "machine B's presence did not expire")

    [error] = [f for f in asyncio.run(chat_frames(web, cookie, on_b.id)) if f["type"] == "chat.error"]
    assert error["code"] == "node_down" and b.name in error["message"], error
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model=on_b.repository.repo_id, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.status_code == 503
    assert refused.value.body["code"] == "node_down" and b.name in refused.value.body["message"]
    assert on_b.repository.repo_id not in {m.id for m in client.models.list().data}
    # The other machine answers meanwhile.
    answered_on_the_page_by(asyncio.run(chat_frames(web, cookie, on_a.id)), a)
    answered_by_the_api(client, on_a.repository.repo_id, a)

    # B's workers start again (its reconcile finds its cache as it left it): its model is back everywhere.
    b.start()
    assert on_b.repository.repo_id in {m.id for m in client.models.list().data}
    answered_on_the_page_by(asyncio.run(chat_frames(web, cookie, on_b.id)), b)
    answered_by_the_api(client, on_b.repository.repo_id, b)
