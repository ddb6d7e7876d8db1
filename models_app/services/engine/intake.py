"""The inference worker's intake: generation requests taken straight off Redis, not through Celery.

`inference.start_generation` pushes each request, as JSON, onto its queue's inbox (a Redis list). Here one
thread waits on the inboxes of the queues this worker consumes (BLPOP: it wakes the moment a request lands),
takes what else waits there up to its free slots (one more round trip: a burst of clients reaches the engine
loop together, engine/batch.py GATHER), and hands each request to a slot, a thread that runs
`generation.generate` as the Celery task did: the database rows, the job handed to the engine's one loop
(engine/batch.py), the results. A Celery task took 3-13 ms from send to start on this kind of machine, more
than a fast model's whole first token; this takes one Redis wake-up.

The intake takes a request only when a slot is free, so what waits stays in the list, where another machine's
worker can take it and `inference.places_ahead` counts it. A request is taken at most once (BLPOP removes it):
a worker that dies with it loses it, and the web side's watch reports worker_died, as with Celery before
(acks_late=False). A request older than QUEUE_EXPIRY is dropped unanswered: its page gave up long ago.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.db import close_old_connections

from models_app.services import inference

if TYPE_CHECKING:
    from models_app.services.engine.batch import Arrival

log = logging.getLogger(__name__)

# How long one BLPOP waits before the thread looks at its stop flag again.
WAIT = 1.0
# After Redis failed: wait this long before trying again (Redis restarting must not spin the thread).
RETRY_AFTER = 1.0


class Intake:
    def __init__(self, queues: list[str], *, slots: int) -> None:
        self.keys = [inference.inbox_key(q) for q in queues]
        self._free = threading.Semaphore(slots)
        self._slots = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="inference-slot")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference-intake", daemon=True)
        # Its own connection: BLPOP holds it for up to WAIT seconds, longer than the shared client allows.
        self._redis = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=WAIT + 5, decode_responses=True
        )

    def start(self) -> Intake:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take no more requests; wait for those running to end (a warm shutdown, as Celery's)."""
        self._stopping.set()
        self._thread.join(WAIT + 6)
        self._slots.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._free.acquire(timeout=WAIT):
                continue  # every slot busy: what waits stays in the list
            raw = None
            try:
                raw = self._take()
                if raw is not None:
                    self._start(raw)
                    self._take_more()
            except Exception:  # never let the intake die: nothing else takes this worker's requests
                log.exception("the inference intake failed")
                self._stopping.wait(RETRY_AFTER)
                raw = None
            if raw is None:
                self._free.release()

    def _take(self) -> str | None:
        try:
            found = self._redis.blpop(self.keys, timeout=WAIT)
        except redis.RedisError as exc:
            log.warning("cannot read the inference inbox (retrying in %.0f s): %r", RETRY_AFTER, exc)
            self._stopping.wait(RETRY_AFTER)
            return None
        return None if found is None else found[1]

    def _take_more(self) -> None:
        """What else waits, up to the free slots, in one round trip per queue: a burst of clients reaches the
        engine loop together (engine/batch.py GATHER), not one BLPOP wake-up (1-4 ms under load) apart."""
        spare = 0
        while self._free.acquire(blocking=False):
            spare += 1
        try:
            for key in self.keys:
                if not spare:
                    break
                pipe = self._redis.pipeline(transaction=False)
                for _ in range(spare):
                    pipe.lpop(key)
                for raw in pipe.execute():
                    if raw is not None:
                        self._start(raw)
                        spare -= 1
        except redis.RedisError as exc:  # the next BLPOP says whether Redis is away
            log.warning("cannot read the inference inbox: %r", exc)
        finally:
            if spare:
                self._free.release(spare)

    def _start(self, raw: str) -> None:
        """A slot for a request taken (its slot already counted off _free); the engine loop expects it."""
        self._slots.submit(self._serve, raw, _expect())

    def _serve(self, raw: str, arrival: Arrival) -> None:
        try:
            request = _parse(raw)
            if request is not None:
                from models_app.services.engine import generation

                generation.generate(request, arrival=arrival)
        except Exception:  # generate never raises; this guards the slot itself
            log.exception("an inference slot failed")
        finally:
            arrival.land()  # a no-op when its job reached the loop; else it failed or was dropped on its way
            close_old_connections()  # as Django does after a request, and Celery's tasks here after a task
            self._free.release()


def _expect() -> Arrival:
    from models_app.services.engine.batch import engine_loop

    return engine_loop().expect()


def _parse(raw: str) -> dict[str, Any] | None:
    try:
        request = json.loads(raw)
    except ValueError:
        log.warning("dropped an inference request that is not JSON")
        return None
    if not isinstance(request, dict):
        log.warning("dropped an inference request that is not an object")
        return None
    enqueued_at = request.get("enqueued_at")
    if isinstance(enqueued_at, int | float) and time.time() - enqueued_at > inference.QUEUE_EXPIRY:
        log.warning(
            "dropped request %s: queued for over %d s", request.get("request_id"), inference.QUEUE_EXPIRY
        )
        inference.leave_queue(request)
        return None
    return request


_intake: Intake | None = None


def start(queues: list[str], *, slots: int) -> Intake:
    """Start this process's intake (the inference worker's, once it is ready)."""
    global _intake
    if _intake is None:
        _intake = Intake(queues, slots=slots).start()
        log.info("inference intake on %s (%d slots)", ", ".join(queues), slots)
    return _intake


def stop() -> None:
    global _intake
    if _intake is not None:
        _intake.stop()
        _intake = None
