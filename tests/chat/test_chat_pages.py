"""The chat page and its small endpoints: login required, only your own conversations, history rendered from
the database (escaped), the model picker, rename and delete."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from models_app.models import Conversation, Message
from tests.factories import make_snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(alice, tiny_snapshot):  # type: ignore[no-untyped-def]
    conversation = Conversation.objects.create(
        user=alice,
        title="About MLX",
        snapshot=tiny_snapshot,
        system_prompt="Be brief.",
        settings={"temperature": 0.3},
    )
    Message.objects.create(conversation=conversation, role="user", content="<script>alert(1)</script> hi")
    Message.objects.create(
        conversation=conversation,
        role="assistant",
        content="**Hello**",
        completion_tokens=7,
        ttft_ms=12.4,
        tokens_per_second=55.5,
        prompt_tokens=20,
        finish_reason="length",
    )
    return conversation


def test_the_chat_page_requires_login(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get(reverse("chat"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_renders_the_history_escaped_with_its_figures(alice_client, conversation) -> None:  # type: ignore[no-untyped-def]
    body = alice_client.get(reverse("chat_conversation", args=[conversation.id])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; hi" in body and "<script>alert(1)" not in body
    assert "**Hello**" in body  # raw: chat.js renders the Markdown, safely
    assert "TTFT 12 ms · 55.5 tokens/s · 7 tokens · prompt 20" in body
    assert "Be brief." in body and 'value="0.3"' in body
    assert f'data-conversation-id="{conversation.id}"' in body
    assert "dashboard/chat.js" in body and "https://" not in body


def test_only_your_own_conversations_are_listed_or_opened(client, bob, conversation) -> None:  # type: ignore[no-untyped-def]
    client.force_login(bob)
    assert "About MLX" not in client.get(reverse("chat")).content.decode()
    for name in ("chat_conversation", "chat_messages"):
        assert client.get(reverse(name, args=[conversation.id])).status_code == 404
    for name in ("chat_rename", "chat_delete"):
        assert client.post(reverse(name, args=[conversation.id]), {"title": "x"}).status_code == 404
    conversation.refresh_from_db()
    assert conversation.title == "About MLX"


def test_the_model_picker_offers_ready_models_you_may_use(alice_client, alice, bob, tiny_model_path) -> None:  # type: ignore[no-untyped-def]
    mine = make_snapshot("test/public", path=tiny_model_path)
    other = make_snapshot("test/other", path=tiny_model_path)
    make_snapshot("bob/private", path=tiny_model_path, private=True, owner=bob)
    make_snapshot("test/downloading", path=tiny_model_path, status="downloading")
    body = alice_client.get(reverse("chat")).content.decode()
    assert "test/public" in body and "test/other" in body
    assert "bob/private" not in body and "test/downloading" not in body
    for ref in (other.id, "test/other"):
        body = alice_client.get(reverse("chat"), {"model": ref}).content.decode()
        assert f'<option value="{other.id}" data-repo="test/other" selected>' in body
        assert f'<option value="{mine.id}" data-repo="test/public">' in body


def test_with_no_model_ready_it_says_so(alice_client) -> None:  # type: ignore[no-untyped-def]
    body = alice_client.get(reverse("chat")).content.decode()
    assert "No model is ready yet" in body and 'id="send" disabled' in body


def test_messages_json_is_the_database_state(alice_client, conversation) -> None:  # type: ignore[no-untyped-def]
    data = alice_client.get(reverse("chat_messages", args=[conversation.id])).json()
    assert data["conversation"] == {"id": conversation.id, "title": "About MLX"}
    assert [(m["role"], m["status"]) for m in data["messages"]] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert data["messages"][1]["figures"]["tokens_per_second"] == 55.5


def test_rename_and_delete(alice_client, conversation) -> None:  # type: ignore[no-untyped-def]
    response = alice_client.post(
        reverse("chat_rename", args=[conversation.id]), {"title": "  Renamed\n chat "}
    )
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == "Renamed chat"
    response = alice_client.post(reverse("chat_delete", args=[conversation.id]))
    assert response.status_code == 302 and response["Location"] == reverse("chat")
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_the_page_costs_the_same_queries_whatever_the_history(alice_client, alice, conversation) -> None:  # type: ignore[no-untyped-def]
    url = reverse("chat_conversation", args=[conversation.id])
    alice_client.get(url)
    with CaptureQueriesContext(connection) as small:
        alice_client.get(url)
    for i in range(30):
        Message.objects.create(conversation=conversation, role="user", content=f"more {i}")
        Conversation.objects.create(user=alice, title=f"other {i}")
    with CaptureQueriesContext(connection) as big:
        alice_client.get(url)
    assert len(big) == len(small)


def test_an_answer_whose_worker_died_is_settled_when_the_page_is_read(alice_client, conversation) -> None:  # type: ignore[no-untyped-def]
    """Its page went away, so nobody watched it: reading the conversation settles it instead of showing
    'generating' forever."""
    import uuid

    from models_app.services import inference
    from models_app.services import redis as app_redis

    orphan = Message.objects.create(
        conversation=conversation, role="assistant", status="pending", request_id=uuid.uuid4()
    )
    queued = Message.objects.create(
        conversation=conversation, role="assistant", status="pending", request_id=uuid.uuid4()
    )
    app_redis.client().set(inference.picked_key(str(orphan.request_id)), "dead-worker@nowhere", ex=60)
    data = alice_client.get(reverse("chat_messages", args=[conversation.id])).json()
    statuses = {m["id"]: (m["status"], m["error"]) for m in data["messages"]}
    assert statuses[orphan.id] == ("error", "The inference worker stopped while writing this answer.")
    assert statuses[queued.id] == ("pending", "")  # just sent: a worker may still take it
