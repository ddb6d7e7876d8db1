"""The engine's loop: one thread per inference worker runs every generation of the process, batched.

The worker runs INFERENCE_SLOTS slot threads (engine/intake.py). A slot reads its rows (in its own thread), hands
a `Job` to `engine_loop().run(job)` and waits; then it saves the answer and sends chat.done. The loop thread owns
everything that touches MLX: loading and unloading models, the prompt cache, every forward pass.

A request that finds its model idle, with a short prompt and no logits processors, runs solo (engine/solo.py:
mlx-lm's generate_step, cheaper per token than a batch of one) until a second request of the model arrives; then
it moves into the model's BatchGenerator with its KV cache and goes on batched. The last answer left in a batch
goes on solo the same way, once past its prompt.

For each loaded model with requests, the loop keeps one mlx-lm `BatchGenerator` (continuous batching, as
`mlx_lm.server` does): a request joins it as soon as the loop takes it, its prompt processed in paced chunks
between the decode steps of the others, and leaves it when it ends (end of sequence, max_tokens, a stop string,
Stop, or a reader gone), the others carrying on. One decode step is one forward pass for every answer of the
model. Each request keeps its own sampler, penalties, logit_bias and response_format processors, and logprobs.

Requests that come together start together: a new prompt waits (GATHER at most) for the requests this worker's
intake has taken but that have not reached the loop yet (each reads its rows in its slot thread first), so a
burst of clients shares one prompt pass instead of a pass each, one after another. `mlx_lm.server` gets the same
by taking every queued request before its next step.

A request that cannot be batched runs alone, the batches paused meanwhile (as mlx_lm.server does):
- one with a `seed`: MLX's random state is one per process, so a seeded answer is reproducible only when
  nothing else samples between its steps;
- one for a model whose KV cache cannot be merged into a batch (mlx-lm's `merge`; some recurrent layers).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from django.conf import settings
from mlx_lm.generate import BatchGenerator

from models_app.services.engine.answer import Answer
from models_app.services.engine.prefill import MAX_STEP
from models_app.services.engine.prompt import as_shown
from models_app.services.engine.solo import Solo, can_go_solo
from models_app.services.engine.state import EngineState, state

if TYPE_CHECKING:  # generation imports this module
    from models_app.services.engine.generation import Job, Prepared
    from models_app.services.engine.registry import LoadedModel

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25
# How long a new prompt waits for requests on their way to the loop (Arrival). A slot takes 1-2 ms from the
# intake to the loop, 3-9 ms under a burst of four on 2 cores; a lone request never waits (none is on its way).
GATHER = 0.010
# An answer's text goes out every CHAT_BATCH_INTERVAL while it is the only one streaming, and that times the
# number of answers the loop streams when there are several, up to this (delta_interval). Every message costs
# the sender, Redis, the web process and the client ~2 ms of CPU between them, taken from the engine's on a
# small machine: 4 OpenAI clients of the fast model on 2 cores left the worker 1.07-1.16 cores with a message
# every 25 ms per answer, and 1.35-1.42 with one every 200 ms. Each answer still shows new text 10 times a second.
MAX_DELTA_INTERVAL = 0.1
# The key of a solo answer among a batch's members (BatchGenerator's uids count from 0).
SOLO = -1
SOLO_MEASURES_FROM = 64  # prompt tokens


@dataclass
class _Work:
    """Something for the loop thread: a job to run, or a call (load, unload) to make between steps."""

    job: Job | None = None
    call: Callable[[], Any] | None = None
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done.set()


@dataclass
class _Member:
    """A request inside a model's batch."""

    uid: int
    work: _Work
    job: Job
    prepared: Prepared
    answer: Answer
    decoding: bool = False  # past its prompt: its KV cache holds the prompt and the tokens so far
    last_progress: float = 0.0
    stays_batched: bool = False  # asked once to go on solo, it could not (Solo.resume): not asked every step


def delta_interval(streams: int) -> float:
    """How often each of `streams` answers sends its text (see MAX_DELTA_INTERVAL)."""
    base = settings.CHAT_BATCH_INTERVAL
    return max(base, min(MAX_DELTA_INTERVAL, base * streams))


class Arrival:
    """A request the worker's intake took, on its way to the loop through a slot (engine/intake.py). The loop
    counts them, to wait for them before a new prompt's first pass (GATHER)."""

    def __init__(self, loop: EngineLoop) -> None:
        self._loop = loop
        self.landed = False

    def land(self) -> None:
        """Its slot is done with it: a no-op once its job reached the loop (EngineLoop.run), else the loop
        stops waiting for it (it failed, or was dropped, on its way)."""
        self._loop._landed(self, None)


def _nothing() -> None:
    return None


class _ModelBatch:
    """The requests of one loaded model, and the BatchGenerator they share."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        slots = settings.INFERENCE_SLOTS
        self.generator = BatchGenerator(
            loaded.model,
            stop_tokens=[[t] for t in loaded.tokenizer.eos_token_ids],
            completion_batch_size=slots,
            prefill_batch_size=slots,
            # The loop sets the chunk size of each step from the model's measured prompt speed (prefill.py);
            # this is only the ceiling of the prompt batch's own inner loop.
            prefill_step_size=MAX_STEP,
        )
        self.eos = set(loaded.tokenizer.eos_token_ids)
        self.members: dict[int, _Member] = {}
        # The model's only request, while it is alone (engine/solo.py); its member is members[SOLO].
        self.solo: Solo | None = None

    def add(self, work: _Work, prepared: Prepared) -> None:
        job = work.job
        assert job is not None
        options = job.request.options
        answer = Answer(
            stream=job.stream,
            tokenizer=self.loaded.tokenizer,
            stops=options.get("stop", []),
            logprobs=options.get("logprobs"),
            interval=settings.CHAT_BATCH_INTERVAL,
        )
        if not self.members and can_go_solo(prepared, self.loaded.prefill.next_step()):
            self.solo = Solo(prepared, self.eos)
            self.members[SOLO] = _Member(SOLO, work, job, prepared, answer)
            return
        self._end_solo()  # a second request: the solo goes on batched with it
        uncached = prepared.prompt_tokens[prepared.cached :]
        (uid,) = self.generator.insert(
            [uncached],
            max_tokens=[prepared.max_tokens],
            caches=[prepared.cache],
            # What the KV cache already holds: the penalties see the whole prompt, as they do unbatched.
            all_tokens=[prepared.prompt_tokens[: prepared.cached]],
            samplers=[prepared.sampler],
            logits_processors=[prepared.processors],
        )
        self.members[uid] = _Member(uid, work, job, prepared, answer)

    def _end_solo(self) -> None:
        if self.solo is None:
            return
        member = self.members.pop(SOLO)
        member.uid = self.solo.into(self.generator)
        self.members[member.uid] = member
        self.solo = None

    def _step_solo(self, engine: EngineState) -> None:
        solo, member = self.solo, self.members[SOLO]
        assert solo is not None
        prompt_step = not solo.generated
        started = time.perf_counter()
        token, logprobs, finish = solo.next()
        uncached = len(solo.prepared.prompt_tokens) - solo.prepared.cached
        # Its prompt went in with the first token: what the pace learns from (prefill.py), when the prompt
        # outweighs the decode step that came with it.
        if prompt_step and uncached >= SOLO_MEASURES_FROM:
            self.loaded.prefill.observe(uncached, time.perf_counter() - started)
        member.decoding = True
        member.answer.add(token, logprobs, finish)
        if finish is not None:
            self._finish(engine, SOLO, solo.cache, solo.tokens)
        elif member.answer.finish is not None:  # a stop string
            self._finish(engine, SOLO, solo.cache, solo.tokens, finish=None)
        elif member.job.stream.should_stop:  # Stop, or the reader is gone
            self._finish(engine, SOLO, solo.cache, solo.tokens, finish="cancelled")

    def step(self, engine: EngineState, interval: float) -> None:
        """One step: a decode step for every answer past its prompt, a prompt chunk for the others. `interval`:
        how often each answer sends its text now (delta_interval)."""
        for member in self.members.values():
            member.answer.interval = interval
        if self.solo is not None:
            self._step_solo(engine)
        else:
            self._step_batch(engine)

    def _step_batch(self, engine: EngineState) -> None:
        generator = self.generator
        if all(member.decoding for member in self.members.values()):
            # No prompt in this step: nothing for the pace to learn, and generator.stats() costs two
            # dataclasses.asdict() per step (~3% of a fast model's decode).
            prompt_responses, responses = generator.next()
        else:
            pace = self.loaded.prefill
            generator.prefill_step_size = pace.next_step()
            with generator.stats() as stats:
                prompt_responses, responses = generator.next()
            if stats.prompt_tokens:
                pace.observe(stats.prompt_tokens, stats.prompt_time)
        now = time.perf_counter()
        for r in prompt_responses:
            member = self.members.get(r.uid)
            if member is not None:
                self._progress(member, r.progress[0], now)
        leaving: list[tuple[_Member, str | None]] = []
        for r in responses:
            member = self.members.get(r.uid)
            if member is None:
                continue
            member.decoding = True
            member.answer.add(r.token, r.logprobs, r.finish_reason)
            if r.finish_reason is not None:  # the generator let it go itself, with its cache
                self._finish(engine, r.uid, r.prompt_cache, r.all_tokens)
            elif member.answer.finish is not None:  # a stop string
                leaving.append((member, None))
        for member in self.members.values():
            if member.answer.finish is None and member.job.stream.should_stop:  # Stop, or the reader is gone
                leaving.append((member, "cancelled"))
        for member, finish in leaving:
            uid = member.uid
            # A cache still inside its prompt is not worth keeping (as unbatched: a half-processed prompt).
            caches = self.generator.remove([uid], return_prompt_caches=member.decoding)
            cache, tokens = caches.get(uid, (None, None))
            self._finish(engine, uid, cache, tokens, finish=finish)
        self._last_goes_solo()

    def _last_goes_solo(self) -> None:
        """The batch's last answer, past its prompt and with no logits processors, goes on solo: a BatchGenerator
        of one cost 10-25% more per token than generate_step here (a long prompt's answer, whose prompt went in
        the batch's paced chunks; the last of several answers)."""
        if self.solo is not None or len(self.members) != 1:
            return
        ((uid, member),) = self.members.items()
        if not member.decoding or member.stays_batched or member.prepared.processors:
            return
        found = self.generator.extract_cache([uid]).get(uid)
        solo = Solo.resume(member.prepared, self.eos, *found) if found else None
        if solo is None:
            member.stays_batched = True
            return
        self.generator.remove([uid])
        del self.members[uid]
        member.uid = SOLO
        self.members[SOLO] = member
        self.solo = solo

    def _progress(self, member: _Member, processed: int, now: float) -> None:
        prepared = member.prepared
        processed += prepared.cached
        # The whole prompt is in: the first token is next, and a full bar says nothing (as unbatched, where the
        # last chunk goes through the token loop and reports no progress).
        if member.job.stream.should_stop or processed >= len(prepared.prompt_tokens):
            return
        started = member.answer.started
        # Only a prompt that takes a while is worth a progress bar.
        if now - member.last_progress >= PROGRESS_INTERVAL and (
            member.last_progress or now - started >= PROGRESS_INTERVAL
        ):
            member.last_progress = now
            member.job.stream.emit("chat.progress", processed=processed, total=len(prepared.prompt_tokens))

    def _finish(
        self,
        engine: EngineState,
        uid: int,
        cache: list[Any] | None,
        tokens: list[int] | None,
        *,
        finish: str | None = None,
    ) -> None:
        member = self.members.pop(uid)
        if uid == SOLO:
            self.solo = None
        answer, prepared, outcome = member.answer, member.prepared, member.job.outcome
        answer.close(finish)
        outcome.text = answer.text
        outcome.finish_reason = answer.finish or "length"
        outcome.completion_tokens = answer.tokens
        figures = answer.figures()
        if answer.first_ns is not None:
            member.job.request.hops["first_token"] = answer.first_ns
        outcome.ttft_ms, outcome.tokens_per_second = figures["ttft_ms"], figures["tokens_per_second"]
        if answer.first_at is not None:
            uncached = len(prepared.prompt_tokens) - prepared.cached
            outcome.prompt_tps = round(uncached / max(answer.first_at - answer.started, 1e-6), 1)
        # The process's peak: requests overlap, so none has a peak of its own.
        outcome.peak_memory_bytes = mx.get_peak_memory()
        if cache is not None and tokens:
            # Whole: ended by the model (end of sequence, or max_tokens), not cut by a stop string or Stop.
            whole = finish is None and not answer.stops.stopped and answer.tokens > 0
            shown = as_shown(self.loaded.tokenizer, answer.text, tokens[-1]) if whole else None
            member.job.keep(engine, prepared, list(tokens), cache, shown)
        engine.registry.release(self.loaded)
        member.work.end()

    def fail(self, engine: EngineState, error: BaseException) -> None:
        """The step raised: every request of this batch ends with that error (chat.error internal)."""
        for member in self.members.values():
            engine.registry.release(self.loaded)
            member.work.end(error)
        self.members.clear()
        self.solo = None


class EngineLoop:
    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._batches: dict[int, _ModelBatch] = {}  # by id() of the LoadedModel
        self._lock = threading.Lock()
        self._arriving = 0  # Arrivals not landed yet
        self._fresh_at: float | None = None  # when a prompt joined a batch and no step has run since
        self._thread = threading.Thread(target=self._run_forever, name="inference-engine", daemon=True)
        self._thread.start()

    # --- From task threads -------------------------------------------------------------------------------------

    def expect(self) -> Arrival:
        """A request is on its way (the intake took it): `run(job, arrival)`, or `arrival.land()` when it
        will not come."""
        with self._lock:
            self._arriving += 1
        return Arrival(self)

    def run(self, job: Job, arrival: Arrival | None = None) -> None:
        """Run job to its end, filling job.outcome; raises what failed it (model load, prompt, options...)."""
        self._submit(_Work(job=job), arrival)

    def call(self, function: Callable[[], Any]) -> Any:
        """function() on the loop thread, between two steps (loading and unloading touch MLX)."""
        if threading.current_thread() is self._thread:
            return function()
        return self._submit(_Work(call=function))

    def _submit(self, work: _Work, arrival: Arrival | None = None) -> Any:
        if arrival is None:
            self._inbox.put(work)
        else:
            self._landed(arrival, work)
        work.done.wait()
        if work.error is not None:
            raise work.error
        return work.result

    def _landed(self, arrival: Arrival, work: _Work | None) -> None:
        with self._lock:
            if arrival.landed:  # only a job handed over twice; it still runs
                if work is not None:
                    self._inbox.put(work)
                return
            arrival.landed = True
            self._arriving -= 1
            # Under the lock: a loop that sees the count drop finds the work in its inbox. One that will not
            # come wakes the loop as well (a call that does nothing), so it does not wait out GATHER for it.
            self._inbox.put(work if work is not None else _Work(call=_nothing))

    # --- The loop thread ---------------------------------------------------------------------------------------

    def _run_forever(self) -> None:
        while True:
            try:
                self._take_work()
                self._gather()
                engine = state()
                interval = delta_interval(sum(len(batch.members) for batch in self._batches.values()))
                for key, batch in list(self._batches.items()):
                    try:
                        batch.step(engine, interval)
                    except Exception as exc:
                        log.exception("a batch step of %s failed", batch.loaded.spec.repo_id)
                        batch.fail(engine, exc)
                    if not batch.members:
                        batch.generator.close()
                        del self._batches[key]
            except Exception:  # never let the loop die: every task thread waits on it
                log.exception("the engine loop failed")

    def _take_work(self) -> None:
        """Everything waiting; when there is nothing to step, sleep until something arrives."""
        if not self._batches:
            self._do(self._inbox.get())
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                work = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._do(work)

    def _gather(self) -> None:
        """A new prompt waits, GATHER at most, for the requests on their way, to share its first pass."""
        if self._fresh_at is None:
            return
        deadline = self._fresh_at + GATHER
        try:
            while True:
                self._drain()
                if not self._arriving:  # an int read: _landed lowers it with the work already in the inbox
                    return
                left = deadline - time.perf_counter()
                if left <= 0:
                    return
                try:
                    work = self._inbox.get(timeout=left)
                except queue.Empty:
                    return
                self._do(work)
        finally:
            self._fresh_at = None  # the prompts added meanwhile were gathered with it

    def _do(self, work: _Work) -> None:
        if work.call is not None:
            try:
                work.result = work.call()
            except BaseException as exc:
                work.end(exc)
            else:
                work.end()
            return
        job = work.job
        assert job is not None
        engine = state()
        try:
            prepared = job.prepare(engine)  # loads the model, builds the prompt, sends chat.started
        except BaseException as exc:
            work.end(exc)
            return
        if not prepared.batchable:
            try:
                job.run_alone(engine, prepared)
            except BaseException as exc:
                work.end(exc)
            else:
                work.end()
            finally:
                engine.registry.release(prepared.loaded)
            return
        batch = self._batches.get(id(prepared.loaded))
        if batch is None:
            batch = self._batches[id(prepared.loaded)] = _ModelBatch(prepared.loaded)
        try:
            batch.add(work, prepared)
        except BaseException as exc:
            engine.registry.release(prepared.loaded)
            work.end(exc)
            return
        if self._fresh_at is None:
            self._fresh_at = time.perf_counter()


_loop: EngineLoop | None = None
_loop_lock = threading.Lock()


def engine_loop() -> EngineLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = EngineLoop()
        return _loop
