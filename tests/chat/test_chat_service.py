"""Conversation services: what goes into a generation request, who may see and use what, regenerate and stop.
The enqueue is replaced by a recorder here: the socket tests run the real worker."""

from __future__ import annotations

import pytest

from models_app.models import Conversation, Message, Repository
from models_app.services import chat, inference
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def enqueued(monkeypatch):  # type: ignore[no-untyped-def]
    requests: list[dict] = []
    monkeypatch.setattr(inference, "ensure_worker", lambda queue=inference.QUEUE: None)
    monkeypatch.setattr(inference, "start_generation", lambda request, queue=None: requests.append(request))
    return requests


def post(user, content: str, **kwargs):  # type: ignore[no-untyped-def]
    return chat.post_message(user=user, content=content, reply_channel="test.reply!x", **kwargs)


def finish(started: chat.Started, text: str, status: str = "complete") -> None:
    Message.objects.filter(id=started.assistant_message_id).update(content=text, status=status)


def test_posting_saves_the_message_and_a_pending_answer(alice, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    started = post(
        alice,
        "What is MLX?",
        conversation_id=None,
        snapshot_id=tiny_snapshot.id,
        system_prompt="Be brief.",
        options={"temperature": 0.2, "stop": "END"},
    )
    [request] = enqueued
    conversation = Conversation.objects.get(id=started.conversation_id)
    assert (conversation.user, conversation.title, conversation.snapshot) == (
        alice,
        "What is MLX?",
        tiny_snapshot,
    )
    assert conversation.settings == {"temperature": 0.2, "stop": ["END"]}
    answer = Message.objects.get(id=started.assistant_message_id)
    assert (answer.role, answer.status, str(answer.request_id)) == (
        "assistant",
        "pending",
        started.request_id,
    )
    assert request == {
        "request_id": started.request_id,
        "reply_channel": "test.reply!x",
        "snapshot_id": tiny_snapshot.id,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is MLX?"}],
        "options": {"temperature": 0.2, "stop": ["END"]},
        "user_id": alice.id,
        "api_key_id": None,
        "source": "browser",
        "assistant_message_id": answer.id,
    }


def test_the_request_holds_the_history_without_failed_answers(alice, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    first = post(alice, "one", conversation_id=None, snapshot_id=tiny_snapshot.id)
    finish(first, "", status="error")  # failed: left out, and the two questions are merged
    second = post(alice, "two", conversation_id=first.conversation_id)
    finish(second, "answer two", status="stopped")  # a stopped answer's text is context
    post(alice, "three", conversation_id=first.conversation_id)
    assert enqueued[-1]["messages"] == [
        {"role": "user", "content": "one\n\ntwo"},
        {"role": "assistant", "content": "answer two"},
        {"role": "user", "content": "three"},
    ]
    assert enqueued[-1]["snapshot_id"] == tiny_snapshot.id  # the conversation's model by default
    assert enqueued[-1]["options"] == {}


def test_one_answer_at_a_time_per_conversation(alice, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    first = post(alice, "one", conversation_id=None, snapshot_id=tiny_snapshot.id)
    with pytest.raises(chat.ChatError) as busy:
        post(alice, "two", conversation_id=first.conversation_id)
    assert busy.value.code == "busy"
    assert Message.objects.filter(conversation_id=first.conversation_id).count() == 2


def test_a_follow_up_reads_its_conversation_and_what_the_catalog_does_not_keep(  # type: ignore[no-untyped-def]
    alice, tiny_snapshot, enqueued, django_assert_num_queries, settings
) -> None:
    """From the second message on, the model, the user's limits and the machines come from the web process's
    catalog memos (services/catalog.py) and the history is read once: the conversation, its history, its
    update and the two new messages, in one transaction (its two statements here: a savepoint and its release).
    The conversation is read without its model's rows. Each statement cost ~0.6 ms of CPU on the way to the first token."""
    import time
    import uuid

    from models_app.services import workers
    from models_app.services.nodes import record_seen

    settings.REDIS_PREFIX = f"mlxcr-test-follow-up-{uuid.uuid4().hex[:8]}"
    record_seen()  # a remembered machine (its name is read, and kept, too), whose worker is up
    workers.beat_once(
        hostname="inference@here",
        queues=["inference", f"inference.{settings.NODE_NAME}"],
        started_at=time.time(),
    )
    first = post(alice, "one", conversation_id=None, snapshot_id=tiny_snapshot.id)
    finish(first, "an answer")
    with django_assert_num_queries(7) as follow_up:
        second = post(alice, "two", conversation_id=first.conversation_id)
    # Not even joined to the conversation: the model's rows (a snapshot's file list among them) are kept.
    assert not [q["sql"] for q in follow_up.captured_queries if "models_app_snapshot" in q["sql"]]
    assert [m["content"] for m in enqueued[-1]["messages"]] == ["one", "an answer", "two"]
    finish(second, "another")
    tiny_snapshot.save()  # a catalog row changed: the next message reads the model again
    with django_assert_num_queries(10):
        post(alice, "three", conversation_id=first.conversation_id)


def test_regenerate_replaces_the_last_answer(alice, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    first = post(alice, "one", conversation_id=None, snapshot_id=tiny_snapshot.id, options={"seed": 3})
    finish(first, "old answer")
    again = chat.regenerate(user=alice, conversation_id=first.conversation_id, reply_channel="test.reply!x")
    assert not Message.objects.filter(id=first.assistant_message_id).exists()
    assert enqueued[-1]["messages"] == [{"role": "user", "content": "one"}]
    assert enqueued[-1]["options"] == {"seed": 3}  # the conversation's settings
    assert again.user_message_id is None
    roles = list(Message.objects.filter(conversation_id=first.conversation_id).values_list("role", "status"))
    assert roles == [("user", "complete"), ("assistant", "pending")]


def test_nobody_sees_or_uses_someone_elses_conversation(alice, bob, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    started = post(alice, "mine", conversation_id=None, snapshot_id=tiny_snapshot.id)
    for attempt in (
        lambda: post(bob, "sneaky", conversation_id=started.conversation_id),
        lambda: chat.regenerate(user=bob, conversation_id=started.conversation_id, reply_channel="x"),
        lambda: chat.rename_conversation(user=bob, conversation_id=started.conversation_id, title="mine now"),
        lambda: chat.delete_conversation(user=bob, conversation_id=started.conversation_id),
    ):
        with pytest.raises(chat.ChatError) as refused:
            attempt()
        assert refused.value.code == "not_found"
    assert chat.stop(user=bob, request_id=started.request_id) is False
    assert list(chat.conversations_for(bob)) == []
    assert Conversation.objects.get(id=started.conversation_id).title == "mine"


def test_private_models_only_for_who_may_see_them(alice, bob, staff, tiny_model_path, enqueued) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("bob/private", path=tiny_model_path, private=True, owner=bob)
    assert Repository.objects.get(repo_id="bob/private").private
    with pytest.raises(chat.ChatError) as refused:
        post(alice, "hi", conversation_id=None, snapshot_id=snapshot.id)
    assert refused.value.code == "model_unavailable"
    assert chat.resolve_snapshot(alice, "bob/private") is None
    assert chat.resolve_snapshot(bob, "bob/private") == snapshot
    assert chat.resolve_snapshot(staff, snapshot.id) == snapshot
    post(bob, "hi", conversation_id=None, snapshot_id=snapshot.id)


def test_a_model_not_ready_cannot_be_picked(alice, tiny_model_path, enqueued) -> None:  # type: ignore[no-untyped-def]
    snapshot = make_snapshot("test/tiny-chat", path=tiny_model_path, status="downloading")
    with pytest.raises(chat.ChatError):
        post(alice, "hi", conversation_id=None, snapshot_id=snapshot.id)
    assert not Conversation.objects.exists()


def test_bad_input_is_refused_before_anything_is_saved(alice, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    for content, options in (("", None), ("   ", None), ("x" * 100_001, None), ("ok", {"temperature": 99})):
        with pytest.raises(chat.ChatError) as refused:
            post(alice, content, conversation_id=None, snapshot_id=tiny_snapshot.id, options=options)
        assert refused.value.code == "invalid_request"
    assert not Conversation.objects.exists() and enqueued == []


def test_stop_sets_the_cancel_flag_of_my_own_answer(alice, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    from models_app.services import redis as app_redis

    started = post(alice, "hi", conversation_id=None, snapshot_id=tiny_snapshot.id)
    assert chat.stop(user=alice, request_id=started.request_id) is True
    assert app_redis.client().exists(app_redis.key("cancel", started.request_id))
    assert chat.stop(user=alice, request_id="not-a-uuid") is False


def test_deleting_a_conversation_stops_its_answer(alice, tiny_snapshot, enqueued) -> None:  # type: ignore[no-untyped-def]
    from models_app.services import redis as app_redis

    started = post(alice, "hi", conversation_id=None, snapshot_id=tiny_snapshot.id)
    chat.delete_conversation(user=alice, conversation_id=started.conversation_id)
    assert not Conversation.objects.exists()
    assert app_redis.client().exists(app_redis.key("cancel", started.request_id))


def test_a_failed_enqueue_marks_the_answer(alice, tiny_snapshot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def refuse(request, queue=None):  # type: ignore[no-untyped-def]
        raise inference.InferenceUnavailable("The task queue is not answering: boom")

    monkeypatch.setattr(inference, "ensure_worker", lambda queue=inference.QUEUE: None)
    monkeypatch.setattr(inference, "start_generation", refuse)
    with pytest.raises(chat.ChatError) as refused:
        post(alice, "hi", conversation_id=None, snapshot_id=tiny_snapshot.id)
    assert refused.value.code == "no_worker"
    answer = Message.objects.get(role="assistant")
    assert answer.status == "error" and "boom" in answer.error
