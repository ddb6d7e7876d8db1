"""Twenty chat streams at once over real websockets (uvicorn), while a download runs, against the real
inference worker: every stream that stays is complete and in order (seq from 0, no gap, one terminal frame),
every client that disconnects mid-stream has its generation stopped, nothing is left running afterwards, and
no message was dropped for channel-layer capacity. (One disconnect on its own:
tests/chat/test_chat_socket.py::test_closing_the_socket_cancels_the_generation.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from devkit.processes import wait_for
from models_app.models import DownloadJob, Message, Usage, UserLimits
from models_app.services import hub as hub_service
from models_app.services import workers
from tests.chat.conftest import assert_well_formed, deltas_text
from tests.chat.test_chat_live import log_in
from tests.downloads.conftest import wait_job
from tests.factories import make_snapshot

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

STAYING = 15
LEAVING = 5
TOKENS = 40


async def chat(url: str, origin: str, cookie: str, request: dict[str, Any], *, leave: bool) -> dict[str, Any]:
    """One client: send, then read its stream to the end, or close the socket after the first delta."""
    async with connect(url, origin=origin, additional_headers={"Cookie": cookie}, max_queue=None) as ws:
        await ws.send(json.dumps({"type": "chat.send", **request}))
        accepted = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert accepted["type"] == "chat.accepted", accepted
        frames: list[dict[str, Any]] = []
        first_delta_at = None
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if frame.get("request_id") != accepted["request_id"] or frame["type"] == "chat.queued":
                continue  # chat.queued: its place in line while twenty wait, not part of the worker's stream
            frames.append(frame)
            if frame["type"] == "chat.delta" and first_delta_at is None:
                first_delta_at = time.time()
            if frame["type"] in ("chat.done", "chat.error") or (leave and frame["type"] == "chat.delta"):
                return {"accepted": accepted, "frames": frames, "first_delta_at": first_delta_at}


@pytest.mark.usefixtures("download_worker", "inference_worker")
def test_twenty_streams_at_once_with_a_download_running(
    hub, publish, alice, bob, asgi_server, inference_worker, tiny_model_path, slow_model_path
) -> None:
    # Ten sockets per user at once: more than a user's default share of requests in flight (fair use is
    # tests/chat/test_fair_use.py); staff raised both users' limits for this load test.
    for user in (alice, bob):
        UserLimits.objects.create(user=user, max_in_flight=STAYING + LEAVING)
    tiny = make_snapshot("test/tiny-chat", path=tiny_model_path)
    slow = make_snapshot("test/slow", path=slow_model_path)
    repo_id, _ = publish("during-chat", extra={"padding.bin": os.urandom(2_000_000)})
    # ~10 s of download: at 4 s, a machine loaded with other test runs gave the first token 0.04 s too late.
    hub.faults.throttle(200_000, pattern="padding.bin")
    log_start = len(inference_worker.log())
    cookies = {}
    for name in ("alice", "bob"):
        jar = log_in(asgi_server.url, name, f"{name}-password")
        cookies[name] = "; ".join(f"{c.name}={c.value}" for c in jar)
    url = asgi_server.url.replace("http://", "ws://") + "/ws/chat/"
    download = hub_service.download_model(repo_id, user=alice)
    wait_for(lambda: DownloadJob.objects.get(id=download.id).state == "running", 30, "download not started")

    async def scenario() -> list[dict[str, Any]]:
        clients = []
        for i in range(STAYING + LEAVING):
            leave = i >= STAYING
            request = {
                "content": f"question {i}",
                "snapshot_id": slow.id if leave else tiny.id,
                "options": {"max_tokens": 2000 if leave else TOKENS, "temperature": 0},
            }
            cookie = cookies["alice" if i % 2 else "bob"]
            clients.append(chat(url, asgi_server.url, cookie, request, leave=leave))
        return await asyncio.gather(*clients)

    results = asyncio.run(scenario())
    # The chats really ran alongside the download: it was still going when the first tokens streamed. (Not
    # "when the first answer was complete": on a loaded machine that came 0.1 s after the download ended.)
    finished = wait_job(download)
    assert (finished.state, finished.error_code) == ("succeeded", ""), finished.error_message
    assert finished.finished_at.timestamp() > min(r["first_delta_at"] for r in results if r["first_delta_at"])

    for result in results[:STAYING]:
        frames = result["frames"]
        assert_well_formed(frames)
        assert frames[-1]["type"] == "chat.done", frames[-1]
        assert frames[-1]["usage"]["completion_tokens"] == TOKENS
        answer = Message.objects.get(id=result["accepted"]["assistant_message_id"])
        assert answer.status == "complete" and answer.content == deltas_text(frames) == frames[-1]["text"]
    leaving = [r["accepted"]["request_id"] for r in results[STAYING:]]
    for result in results[STAYING:]:
        frames = result["frames"]
        assert [f["seq"] for f in frames] == list(range(len(frames)))  # in order up to the walk-out

    # Every walk-out stopped its generation: the worker saved what it had and moved on.
    wait_for(
        lambda: Usage.objects.filter(request_id__in=leaving).count() == LEAVING, 60, "walk-outs not settled"
    )
    assert set(Usage.objects.filter(request_id__in=leaving).values_list("finish_reason", flat=True)) == {
        "cancelled"
    }
    for usage in Usage.objects.filter(request_id__in=leaving):
        assert usage.completion_tokens < 2000
    # Nothing left running: no answer in flight, the inference worker idle.
    wait_for(
        lambda: not Message.objects.filter(status__in=["pending", "streaming"]).exists(),
        30,
        "answers in flight",
    )
    assert Message.objects.filter(role="assistant", status="stopped").count() == LEAVING

    def idle() -> bool:
        mine = [w for w in workers.live_workers() if w.hostname == inference_worker.hostname]
        return bool(mine) and not mine[0].extra.get("busy_since")

    wait_for(idle, 15, "the inference worker is still busy")
    # No reply was dropped or refused by the channel layer (a direct send raises ChannelFull when over capacity).
    log = inference_worker.log()[log_start:]
    assert "ChannelFull" not in log and not re.search(r"send to \S+ failed", log)
