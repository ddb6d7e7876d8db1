"""Frames the chat socket cannot read: a client's mistake gets a chat.error and the socket stays open
(the `websockets` library or a browser console can send anything)."""

from __future__ import annotations

import pytest

from tests.chat.conftest import communicator, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "frame",
    [
        {"text_data": "hello, not json"},
        {"text_data": '{"type": "chat.send"'},
        {"bytes_data": b"\x00\x01binary"},
    ],
    ids=["text", "truncated-json", "binary"],
)
def test_an_unreadable_frame_is_answered_and_the_socket_stays_open(client, alice, run_async, frame) -> None:  # type: ignore[no-untyped-def]
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        await comm.send_to(**frame)
        error = await comm.receive_json_from(timeout=10)
        # Still open: the next frame is read and answered.
        await comm.send_json_to({"type": "chat.nothing"})
        after = await comm.receive_json_from(timeout=10)
        await comm.disconnect()
        return error, after

    error, after = run_async(scenario())
    assert error["type"] == "chat.error"
    assert error["code"] == "invalid_request"
    assert "JSON" in error["message"]
    assert after["type"] == "chat.error" and after["message"] == "Unknown message type."


def test_the_downloads_socket_ignores_unreadable_frames(client, alice) -> None:  # type: ignore[no-untyped-def]
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from dashboard.asgi import application

    client.force_login(alice)
    headers = [
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),  # a browser always sends it: the origin check compares the two
        (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()),
    ]

    async def scenario() -> None:
        comm = WebsocketCommunicator(application, "/ws/downloads/", headers=headers)
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from(timeout=10))["type"] == "downloads.snapshot"
        await comm.send_to(text_data="not json")
        await comm.send_to(bytes_data=b"\x00")
        # Neither answered nor closed: the read-only stream just ignores what it is sent.
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()

    async_to_sync(scenario)()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 0}, "Max tokens must be between 1 and 10,000,000."),
        ({"top_p": 2}, "Top p must be between 0 and 1."),
        ({"temperature": "hot"}, "Temperature must be a number."),
        ({"stop": 5}, "Stop strings must be a string or a list of strings."),
    ],
)
def test_option_errors_read_as_sentences(
    client, alice, tiny_snapshot, inference_worker, run_async, options, message
) -> None:  # type: ignore[no-untyped-def]
    """The chat page shows the message as it comes: "Max_tokens must be between 1 and 1e+07" read badly."""
    cookie = session_cookie(client, alice)

    async def scenario():  # type: ignore[no-untyped-def]
        comm = communicator(cookie)
        assert (await comm.connect())[0]
        await comm.send_json_to(
            {"type": "chat.send", "content": "hi", "snapshot_id": tiny_snapshot.id, "options": options}
        )
        reply = await comm.receive_json_from(timeout=15)
        await comm.disconnect()
        return reply

    reply = run_async(scenario())
    assert reply["type"] == "chat.error" and reply["code"] == "invalid_request"
    assert reply["message"] == message
