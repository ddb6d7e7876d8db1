"""Issue 11 item 12: anyone who may see a model may load it, but only the user who loaded it, or staff, may
unload it (pages, REST API, health page), and an unload never cuts anyone's running answer. Real ASGI server,
real inference worker, real tiny model."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx2 as httpx
import pytest
from django.test import Client

from devkit.processes import wait_for
from models_app.models import Snapshot
from models_app.services import inference
from tests.api.conftest import KeyClient, error_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inference_worker")]


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def settle(make_snapshot, tiny_model_path) -> None:  # type: ignore[no-untyped-def]
    """The inference worker is a solo pool: once a load sent now has run, every task sent before it has run.
    (Two models fit: INFERENCE_MAX_MODELS is 2.)"""
    marker = make_snapshot(path=str(tiny_model_path), commit_sha="e" * 40)
    inference.request_load(marker.id)
    wait_for(lambda: marker.id in inference.loaded_models(), 60, "the marker model never loaded")
    inference.request_unload(marker.id)
    wait_for(lambda: marker.id not in inference.loaded_models(), 60, "the marker model never unloaded")


def test_only_the_loader_or_staff_can_unload_a_model(  # type: ignore[no-untyped-def]
    alice,
    bob,
    staff,
    alice_api: KeyClient,
    bob_api: KeyClient,
    staff_api: KeyClient,
    tiny_snapshot,
    make_snapshot,
    tiny_model_path,
) -> None:
    sid = tiny_snapshot.id
    assert alice_api.post(f"/api/v1/models/{sid}/load").status_code == 202
    wait_for(lambda: sid in inference.loaded_models(), 60, "the model never loaded")

    # Bob may see and use the model (it is public) but not unload Alice's load: API, model page, health page.
    refused = bob_api.post(f"/api/v1/models/{sid}/unload")
    assert refused.status_code == 403 and error_of(refused)["code"] == "permission_denied"
    bob_client = logged_in(bob)
    page = bob_client.post(f"/models/{sid}/unload/", follow=True).content.decode()
    assert "Only the user who loaded this model, or staff, can unload it" in page
    for url in (f"/models/{sid}/", "/health/"):
        body = bob_client.get(url).content.decode()
        assert "test/tiny-chat" in body and f"/models/{sid}/unload/" not in body, url
    settle(make_snapshot, tiny_model_path)
    assert sid in inference.loaded_models(), "Bob's unload reached the worker"

    # Alice sees the button and may unload her own load.
    alice_client = logged_in(alice)
    assert f"/models/{sid}/unload/" in alice_client.get("/health/").content.decode()
    assert f"/models/{sid}/unload/" in alice_client.get(f"/models/{sid}/").content.decode()
    assert (
        "Unloading test/tiny-chat"
        in alice_client.post(f"/models/{sid}/unload/", follow=True).content.decode()
    )
    wait_for(lambda: sid not in inference.loaded_models(), 60, "Alice's unload did nothing")

    # Bob loads it now: staff may unload anyone's.
    assert bob_api.post(f"/api/v1/models/{sid}/load").status_code == 202
    wait_for(lambda: sid in inference.loaded_models(), 60, "the model never loaded")
    assert error_of(alice_api.post(f"/api/v1/models/{sid}/unload"))["code"] == "permission_denied"
    assert f"/models/{sid}/unload/" in logged_in(staff).get("/health/").content.decode()
    assert staff_api.post(f"/api/v1/models/{sid}/unload").status_code == 202
    wait_for(lambda: sid not in inference.loaded_models(), 60, "the staff unload did nothing")


@pytest.fixture
def long_snapshot(make_snapshot) -> Snapshot:  # type: ignore[no-untyped-def]
    """A model whose answer outlasts the worker's heartbeat (3 s) on any machine: wider and deeper than the
    tiny one (~150 tokens/s here). The tiny model's 3,000 tokens took 2 s on a fast machine, and its answer
    could end before any heartbeat said the model was busy."""
    from devkit.tinymodel import tiny_model_dir
    from tests.conftest import ROOT

    path = tiny_model_dir(
        ROOT / "var" / "test" / "models", hidden_size=256, num_layers=8, max_position_embeddings=8192
    )
    return make_snapshot("test/tiny-long", path=str(path), commit_sha="b" * 40)


def test_a_staff_unload_never_cuts_a_running_answer(  # type: ignore[no-untyped-def]
    asgi_server, alice_key: str, staff_api: KeyClient, long_snapshot
) -> None:
    max_tokens = 1500
    body = {
        "model": "test/tiny-long",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }
    answering = threading.Event()
    chunks: list[dict[str, Any]] = []

    def read() -> None:
        with (
            httpx.Client(timeout=120) as http,
            http.stream(
                "POST",
                f"{asgi_server.url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {alice_key}"},
                json=body,
            ) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(json.loads(line[6:]))
                    if any(c.get("delta", {}).get("content") for c in chunks[-1].get("choices", [])):
                        answering.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert answering.wait(120), "the answer never started"
        # Sent while the worker reports the model busy generating (its heartbeat comes every 3 s).
        wait_for(
            lambda: inference.loaded_models().get(long_snapshot.id, {}).get("busy") is True,
            30,
            "the worker never reported the model busy",
        )
        unload = staff_api.post(f"/api/v1/models/{long_snapshot.id}/unload")
        assert unload.status_code == 202 and unload.json()["queued"] is True
    finally:
        reader.join(180)
    assert not reader.is_alive()
    finish = [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c.get("choices") and c["choices"][0].get("finish_reason")
    ]
    assert finish == ["length"], chunks[-3:]
    assert chunks[-1]["usage"]["completion_tokens"] == max_tokens
    # The unload ran after the answer, not never.
    wait_for(lambda: long_snapshot.id not in inference.loaded_models(), 60, "the unload never ran")
