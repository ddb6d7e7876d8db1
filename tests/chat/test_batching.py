"""Continuous batching through the real inference worker (threads pool, the engine's batch loop, the real
mlx-lm BatchGenerator): concurrent requests on one model share forward passes, each keeping its own sampling,
stop strings, Stop, usage and reply order."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from channels.layers import get_channel_layer

from models_app.models import Usage
from models_app.services import inference
from tests.chat.conftest import assert_well_formed
from tests.factories import make_snapshot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inference_worker")]


@pytest.fixture
def long_snapshot(long_context_model_path):  # type: ignore[no-untyped-def]
    """The tiny model with an 8k window: an answer without a small max_tokens runs for seconds."""
    return make_snapshot("test/tiny-long", path=long_context_model_path)


def request(snapshot_id: int, content: str, channel: str, **options: Any) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "reply_channel": channel,
        "snapshot_id": snapshot_id,
        "messages": [{"role": "user", "content": content}],
        "options": options,
        "user_id": None,
        "api_key_id": None,
        "source": "api",
    }


async def run_together(
    requests: dict[str, dict[str, Any]], *, stop_after_first_delta: str | None = None
) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[str, str]]]:
    """Send every request at once and read their replies concurrently. Returns each one's replies, and the
    order in which (name, message type) arrived across all of them."""
    layer = get_channel_layer()
    arrivals: list[tuple[str, str]] = []
    order = itertools.count()

    async def read(name: str, req: dict[str, Any]) -> list[dict[str, Any]]:
        replies = []
        async for message in inference.stream_replies(layer, req["reply_channel"], req["request_id"], 60.0):
            replies.append({**message, "_order": next(order)})
            arrivals.append((name, message["type"]))
            if name == stop_after_first_delta and message["type"] == "chat.delta":
                await asyncio.to_thread(inference.cancel_generation, req["request_id"])
        return replies

    for req in requests.values():
        await asyncio.to_thread(inference.start_generation, req)
    results = await asyncio.gather(*(read(name, req) for name, req in requests.items()))
    return dict(zip(requests, results, strict=True)), arrivals


async def channels(n: int) -> list[str]:
    layer = get_channel_layer()
    return [await layer.new_channel() for _ in range(n)]


def text_of(replies: list[dict[str, Any]]) -> str:
    return "".join(m["text"] for m in replies if m["type"] == "chat.delta")


def test_four_concurrent_streams_share_the_model_each_with_its_own_options(long_snapshot, run_async) -> None:  # type: ignore[no-untyped-def]
    sid = long_snapshot.id
    # The stop string comes from the same greedy answer generated alone first: the batched one must match it.
    [reference_channel] = run_async(channels(1))
    reference = request(sid, "the reference prompt", reference_channel, temperature=0, max_tokens=300)
    alone = run_async(run_together({"alone": reference}))[0]["alone"]
    full = alone[-1]["text"]
    stop = full[40:44]
    assert alone[-1]["finish_reason"] == "length" and stop and full.index(stop) > 0

    a, b, c, d = run_async(channels(4))
    requests = {
        "greedy": request(sid, "a first question", a, temperature=0, max_tokens=800),
        "sampled": request(sid, "a second question", b, temperature=0.9, top_p=0.9, top_k=40, max_tokens=800),
        "stop string": request(sid, "the reference prompt", c, temperature=0, max_tokens=300, stop=[stop]),
        "stopped": request(sid, "a question answered at length", d, temperature=0.5, max_tokens=6000),
    }
    replies, arrivals = run_async(run_together(requests, stop_after_first_delta="stopped"))

    for name, messages in replies.items():
        assert_well_formed(messages)
        assert messages[-1]["type"] == "chat.done", (name, messages[-1])
        assert messages[-1]["text"] == text_of(messages), name
    done = {name: messages[-1] for name, messages in replies.items()}
    assert done["greedy"]["finish_reason"] == done["sampled"]["finish_reason"] == "length"
    assert (
        done["greedy"]["usage"]["completion_tokens"] == done["sampled"]["usage"]["completion_tokens"] == 800
    )
    # The batched greedy answer is the one generated alone, cut at the stop string, which never shows.
    assert done["stop string"]["finish_reason"] == "stop"
    assert done["stop string"]["text"] == full[: full.index(stop)]
    assert stop not in text_of(replies["stop string"])
    assert done["stopped"]["finish_reason"] == "cancelled"
    assert 0 < done["stopped"]["usage"]["completion_tokens"] < 6000

    # They ran together: the stopped one ended while the others were still answering, and they carried on.
    stopped_at = arrivals.index(("stopped", "chat.done"))
    for name in ("greedy", "sampled"):
        assert arrivals.index((name, "chat.started")) < stopped_at < arrivals.index((name, "chat.done")), name

    rows = {str(row.request_id): row for row in Usage.objects.all()}
    for name, req in requests.items():
        row = rows[req["request_id"]]
        assert row.finish_reason == done[name]["finish_reason"]
        assert row.completion_tokens == done[name]["usage"]["completion_tokens"]
