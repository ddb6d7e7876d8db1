"""POST /api/v1/models/{id}/load and /unload go to the inference queue of the machine that holds the model,
through the same service as the pages. The REST API used to send them to the shared queue, where another
machine's worker refused them and only logged it, after a 202."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection

from dashboard.celery import app
from models_app.models import Snapshot
from models_app.services import redis as app_redis
from models_app.services import workers

pytestmark = pytest.mark.django_db


def take_message(queue: str) -> dict | None:  # type: ignore[type-arg]
    """The next task message on `queue` in the real broker, removed from it."""
    with Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        simple = conn.SimpleQueue(queue, no_ack=True)
        try:
            message = simple.get(timeout=5)
        except simple.Empty:
            return None
        finally:
            simple.close()
        return {"task": message.headers["task"], "args": message.decode()[0]}


@pytest.fixture
def node_b() -> Iterator[str]:
    """Another machine's inference worker, as its presence key shows it; gone after the test (a machine's own
    queue in the presence keys changes how every later test's chats are routed)."""
    node = f"node-b-{uuid.uuid4().hex[:6]}"
    hostname = f"inference@{node}"
    workers.beat_once(hostname=hostname, queues=["inference", f"inference.{node}"], started_at=time.time())
    yield node
    app_redis.client().delete(app_redis.key("workers", hostname))


def test_load_and_unload_go_to_the_models_machine(staff_api, make_snapshot, node_b: str) -> None:  # type: ignore[no-untyped-def]
    node = node_b
    snapshot = make_snapshot()
    Snapshot.objects.filter(id=snapshot.id).update(node=node)
    response = staff_api.post(f"/api/v1/models/{snapshot.id}/load")
    assert response.status_code == 202, response.content

    sent = take_message(f"inference.{node}")
    assert sent is not None and sent["task"] == "inference.load" and sent["args"][0] == snapshot.id

    response = staff_api.post(f"/api/v1/models/{snapshot.id}/unload")
    assert response.status_code in (200, 202), response.content
    sent = take_message(f"inference.{node}")
    assert sent is not None and sent["task"] == "inference.unload" and sent["args"][0] == snapshot.id
