"""A request's slot among the requests in flight cannot outlive it, even when the web process serving it dies
without a word (SIGKILL mid-stream): its lease is no longer renewed and expires, and the next request of that
user is served. Real uvicorn processes, the real inference worker, the real Redis, the `openai` SDK."""

from __future__ import annotations

import openai
import pytest

from devkit.processes import AsgiServer, wait_for
from devkit.tinymodel import tiny_model_dir
from models_app.models import ApiKey, UserLimits
from models_app.services import inflight
from models_app.services import redis as app_redis
from tests.chat.conftest import MODELS
from tests.factories import make_snapshot

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("inference_worker"),
]

HI = [{"role": "user", "content": "hi"}]


def test_a_killed_web_process_leaves_no_slot_taken(  # type: ignore[no-untyped-def]
    stack_env, process_log_dir, asgi_server, alice
) -> None:
    # The tiny model with an 8k window: an answer long enough to be killed in the middle of.
    make_snapshot("test/tiny-long", path=tiny_model_dir(MODELS, max_position_embeddings=8192))
    UserLimits.objects.create(user=alice, max_in_flight=1)  # one slot: a leaked one would lock alice out
    raw = ApiKey.issue(user=alice, name="agent")[1]
    doomed = AsgiServer(env=stack_env, log_dir=process_log_dir).wait_ready()
    try:
        stream = openai.OpenAI(
            base_url=f"{doomed.url}/v1", api_key=raw, max_retries=0, timeout=120
        ).chat.completions.create(model="test/tiny-long", messages=HI, max_tokens=3000, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # the answer is streaming: the slot is taken
        assert inflight.count("user", alice.id) == 1
        doomed.kill()  # SIGKILL: no finally runs, no release is sent
    finally:
        doomed.stop()

    served = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=raw, max_retries=0, timeout=120)
    with pytest.raises(openai.RateLimitError):  # the dead request's lease is still fresh
        served.chat.completions.create(model="test/tiny-long", messages=HI, max_tokens=2)
    wait_for(
        lambda: inflight.count("user", alice.id) == 0,
        inflight.LEASE_SECONDS + 60,
        "the dead lease never expired",
    )
    answer = served.chat.completions.create(model="test/tiny-long", messages=HI, max_tokens=2)
    assert answer.usage.completion_tokens == 2
    assert int(app_redis.client().get(inflight.expired_key()) or 0) == 1  # counted (and logged) as expired
