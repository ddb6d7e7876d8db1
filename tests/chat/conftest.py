"""Chat fixtures: snapshots of the tiny model registered directly, an engine reset per test, a channel layer
that records what the worker sends, and websocket helpers for the integration tests."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.conftest import ROOT
from tests.factories import make_snapshot

MODELS = ROOT / "var" / "test" / "models"
ORIGIN = (b"origin", b"http://localhost")
# The Host a browser sends with it: the Origin check compares the two (dashboard/ws_origin.py).
HOST = (b"host", b"localhost")


@pytest.fixture(scope="session")
def slow_model_path() -> Path:
    """Wider and deeper than the tiny model (~150 tokens/s here instead of ~1000) with an 8k window: a long
    answer lasts tens of seconds, so Stop and disconnect have something to interrupt."""
    from devkit.tinymodel import tiny_model_dir

    return tiny_model_dir(MODELS, hidden_size=256, num_layers=8, max_position_embeddings=8192)


@pytest.fixture(scope="session")
def long_context_model_path() -> Path:
    """The tiny model with an 8k window: prompts long enough to take several prefill steps, processed fast."""
    from devkit.tinymodel import tiny_model_dir

    return tiny_model_dir(MODELS, max_position_embeddings=8192)


@pytest.fixture(scope="session")
def broken_model_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    path = tmp_path_factory.mktemp("broken-model")
    for item in tiny_model_path.iterdir():
        shutil.copy(item, path / item.name)
    (path / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut off mid-file
    return path


@pytest.fixture
def tiny_snapshot(db, tiny_model_path):  # type: ignore[no-untyped-def]
    return make_snapshot("test/tiny-chat", path=tiny_model_path)


@pytest.fixture
def engine(settings):  # type: ignore[no-untyped-def]
    """A fresh in-process engine (registry and prompt cache) for a unit test: generate, and the state."""
    from types import SimpleNamespace

    from models_app.services.engine import generation, state

    state.reset_state()
    yield SimpleNamespace(
        generate=generation.generate,
        state=state.state,
        spec_for=state.spec_for,
        worker_status=state.worker_status,
    )
    state.reset_state()


class RecordingLayer:
    """Stands in for the channel layer in in-process tests: records every send, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        with self._lock:
            self.sent.append((channel, json.loads(json.dumps(message))))

    def messages(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """The replies sent, each of a chat.bundle in its place."""
        from models_app.services.inference import unbundle

        return [
            reply
            for _, m in self.sent
            if request_id is None or m.get("request_id") == request_id
            for reply in unbundle(m)
        ]


def chat_request(
    snapshot_id: int, messages: list[dict[str, str]] | None = None, **extra: Any
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "reply_channel": "test.reply!local",
        "snapshot_id": snapshot_id,
        "messages": messages if messages is not None else [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0.0, "max_tokens": 8},
        "user_id": None,
        "api_key_id": None,
        "source": "api",
    }
    request.update(extra)
    return request


def run_generate(engine, request: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    layer = RecordingLayer()
    usage = engine.generate(request, layer=layer)
    return usage, layer.messages(request["request_id"])


def deltas_text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["text"] for m in messages if m["type"] == "chat.delta")


def assert_well_formed(messages: list[dict[str, Any]]) -> None:
    """seq from 0 without gaps, chat.started first, exactly one terminal message, last."""
    assert [m["seq"] for m in messages] == list(range(len(messages))), [m["type"] for m in messages]
    assert messages[0]["type"] in ("chat.started", "chat.error")
    terminal = [m for m in messages if m["type"] in ("chat.done", "chat.error")]
    assert len(terminal) == 1 and terminal[0] is messages[-1]


# --- Websocket helpers (integration) ------------------------------------------------------------------------


def session_cookie(client, user) -> bytes:  # type: ignore[no-untyped-def]
    """A session for user, as the Cookie header. A fresh client each time: logging another user in on the
    same client would end the first user's session."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def communicator(cookie: bytes | None):  # type: ignore[no-untyped-def]
    from channels.testing import WebsocketCommunicator

    from dashboard.asgi import application

    class Communicator(WebsocketCommunicator):
        async def connect(self, timeout: float = CONNECT_TIMEOUT):  # type: ignore[no-untyped-def, override]
            return await super().connect(timeout)

    headers = [ORIGIN, HOST] + ([(b"cookie", cookie)] if cookie else [])
    return Communicator(application, "/ws/chat/", headers=headers)


# Not Channels' 1 s: in a CI run (three test processes, a worker loading a model, on two cores) one connect
# took longer once, in a test about Stop. The handshake is the product's; how long a loaded machine takes is
# not what these tests measure (a connect here takes 2-14 ms on a quiet machine).
CONNECT_TIMEOUT = 10.0


async def receive_until_end(comm, request_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Frames of one request, up to and including chat.done or chat.error; without chat.queued (the web
    side's place-in-line notes while it waits, tests/chat/test_fair_use.py), which come only when the worker
    is busy long enough."""
    # Frames of other requests read meanwhile are kept for their own call: answers run batched, so several
    # requests' frames interleave and may end in any order.
    stash: dict[str, list[dict[str, Any]]] = comm.__dict__.setdefault("_frames_of_others", {})
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if stash.get(request_id):
            frame = stash[request_id].pop(0)
        else:
            frame = await comm.receive_json_from(timeout=max(0.1, deadline - loop.time()))
        if frame["type"] == "chat.queued":
            continue
        if frame.get("request_id") != request_id:
            stash.setdefault(frame.get("request_id"), []).append(frame)
            continue
        frames.append(frame)
        if frame["type"] in ("chat.done", "chat.error"):
            return frames


@pytest.fixture
def run_async() -> Iterator:
    def run(coro):  # type: ignore[no-untyped-def]
        return asyncio.run(coro)

    yield run
