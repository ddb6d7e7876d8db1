"""A chat message reads worker presence once (workers.one_reading): the machines that are down, routing, the
worker check and the send each asked Redis before."""

from __future__ import annotations

import time
import uuid

import pytest

from models_app.services import workers


def post_hi(user, snapshot):  # type: ignore[no-untyped-def]
    """A chat message, its in-flight slot given back (nothing reads its inbox here)."""
    from models_app.services import chat, inflight

    started = chat.post_message(
        user=user, conversation_id=None, content="hi", reply_channel="test.reply!x", snapshot_id=snapshot.id
    )
    inflight.release(started.lease)
    return started


@pytest.mark.django_db
def test_a_chat_message_reads_presence_once(settings, monkeypatch, alice, tiny_snapshot) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_PREFIX = f"mlxcr-test-presence-{uuid.uuid4().hex[:8]}"
    from models_app.services.nodes import record_seen

    record_seen()  # a machine the database remembers: the "which machines are down" check reads presence
    workers.beat_once(hostname="inference@here", queues=["inference"], started_at=time.time())
    reads = []
    real = workers._infos  # every presence read parses what it read there, once
    monkeypatch.setattr(workers, "_infos", lambda raws: reads.append(1) or real(raws))
    post_hi(alice, tiny_snapshot)
    assert len(reads) == 1
    assert workers.live_workers()  # outside a message, each call reads again
    assert len(reads) == 2


@pytest.mark.django_db
def test_on_one_machine_a_chat_message_does_not_look_for_copies(
    settings, monkeypatch, alice, tiny_snapshot
) -> None:  # type: ignore[no-untyped-def]
    """The only machine up holds the model: no other copy could answer, so routing asks the database nothing."""
    from models_app.services import routing

    settings.REDIS_PREFIX = f"mlxcr-test-presence-{uuid.uuid4().hex[:8]}"
    workers.beat_once(
        hostname="inference@here",
        queues=["inference", f"inference.{settings.NODE_NAME}"],
        started_at=time.time(),
    )
    looked = []
    real = routing.copies_of
    monkeypatch.setattr(routing, "copies_of", lambda *a, **k: looked.append(1) or real(*a, **k))
    started = post_hi(alice, tiny_snapshot)
    assert looked == []
    assert started.queue == f"inference.{settings.NODE_NAME}"
