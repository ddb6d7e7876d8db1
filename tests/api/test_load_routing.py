"""POST /api/v1/models/{id}/load and /unload go to the inference queue of the machine that holds the model,
through the same service as the pages. The REST API used to send them to the shared queue, where another
machine's worker refused them and only logged it, after a 202."""

from __future__ import annotations

import time
import uuid

import pytest
from kombu import Connection

from dashboard.celery import app
from models_app.models import Snapshot
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


def test_load_and_unload_go_to_the_models_machine(staff_api, make_snapshot, settings) -> None:  # type: ignore[no-untyped-def]
    node = f"node-b-{uuid.uuid4().hex[:6]}"
    snapshot = make_snapshot()
    Snapshot.objects.filter(id=snapshot.id).update(node=node)
    workers.beat_once(
        hostname=f"inference@{node}", queues=["inference", f"inference.{node}"], started_at=time.time()
    )
    response = staff_api.post(f"/api/v1/models/{snapshot.id}/load")
    assert response.status_code == 202, response.content

    sent = take_message(f"inference.{node}")
    assert sent is not None and sent["task"] == "inference.load" and sent["args"][0] == snapshot.id

    response = staff_api.post(f"/api/v1/models/{snapshot.id}/unload")
    assert response.status_code in (200, 202), response.content
    sent = take_message(f"inference.{node}")
    assert sent is not None and sent["task"] == "inference.unload" and sent["args"][0] == snapshot.id
