"""Celery's side of the inference worker (one per host, `-P threads -c INFERENCE_SLOTS`: the loaded models live
in the worker's own process).

Generation requests do not come through Celery: once the worker is ready, it starts the engine's intake
(models_app/services/engine/intake.py), which takes them off Redis lists and runs each in one of
INFERENCE_SLOTS slots feeding the engine's one batching loop (engine/batch.py). The `inference.generate` task
stays, the same function behind a Celery message, for whatever still sends one.

Thin: each task calls one function of the engine (models_app.services.engine), imported inside the task: MLX
is imported by the inference worker only, never by the web process or the downloads worker, which import this
module too."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_init, worker_ready, worker_shutdown

log = logging.getLogger(__name__)


# At most once: a redelivered generation would stream a second answer, from seq 0, into the same channel.
@shared_task(name="inference.generate", acks_late=False, ignore_result=True)
def generate(request: dict[str, Any]) -> None:
    from models_app.services.engine import generation

    generation.generate(request)


@shared_task(name="inference.load", acks_late=False, ignore_result=True)
def load(snapshot_id: int, keep_alive: Any = None, user_id: int | None = None) -> None:
    from models_app.services.engine import state
    from models_app.services.engine.registry import ModelLoadError

    try:
        state.load_model(snapshot_id, keep_alive=keep_alive, user_id=user_id)
    except ModelLoadError as exc:
        log.warning("load of snapshot %s failed: %s", snapshot_id, exc)


@shared_task(name="inference.unload", acks_late=False, ignore_result=True)
def unload(snapshot_id: int, by_user: int | None = None) -> None:
    from models_app.services.engine import state

    state.unload_model(snapshot_id, by_user=by_user)


@shared_task(name="inference.expire_idle", acks_late=False, ignore_result=True)
def expire_idle() -> None:
    from models_app.services.engine import state

    state.expire_idle()


@worker_init.connect
def _setup_inference_worker(sender: Any, **_kwargs: Any) -> None:
    """On a worker that consumes `inference`: import MLX now (not on the first request) and publish the
    backend and the loaded models with the worker's heartbeat (the health and model pages read them)."""
    queues = set(sender.app.amqp.queues.consume_from)
    if "inference" not in queues:
        return
    from models_app.services import workers
    from models_app.services.engine import state

    state.state().hostname = sender.hostname
    workers.add_extra_provider(state.worker_status)
    # This machine's own queue first: a request routed here was meant for this machine.
    _intake_plan.update(queues=sorted(queues, key=lambda q: q == "inference"), slots=sender.concurrency)
    log.info("inference worker %s ready: %s", sender.hostname, state.worker_status()["mlx"])


_intake_plan: dict[str, Any] = {}


@worker_ready.connect
def _start_intake(**_kwargs: Any) -> None:
    """Take generation requests once the worker is up (models_app/services/engine/intake.py)."""
    if _intake_plan:
        from models_app.services.engine import intake

        intake.start(_intake_plan["queues"], slots=_intake_plan["slots"])


@worker_shutdown.connect
def _stop_intake(**_kwargs: Any) -> None:
    """A warm shutdown: no new request, and the running ones end first (as Celery waits for its tasks)."""
    if _intake_plan:
        from models_app.services.engine import intake

        intake.stop()
