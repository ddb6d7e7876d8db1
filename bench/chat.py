"""2. Chat streaming and 3. multi-turn time to first token.

2. The same prompts, greedy, 256 new tokens, warm model: `mlx_lm.stream_generate` in this process vs a
   websocket client on the product's `ws/chat/` (session cookie + Origin, as the page connects), whose
   tokens went worker -> channel layer -> consumer -> socket in batches of ~50 ms.
3. Five turns of one conversation (the same new-message length each turn): TTFT of turn 1 vs turn 5, for the
   product (one conversation over one socket) and for mlx_lm.server (the history sent each turn, as OpenAI
   clients do). With a prompt cache, turn 5 only has to process its new message.

Times are taken where the client sees them: TTFT from sending the request to the first text, decode
tokens/s = (tokens - 1) / (last text - first text), inter-token latency between arrivals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import hops
from bench.report import Row, Section, median, percentile
from bench.stack import MlxServer, Product

if TYPE_CHECKING:  # bench.wire imports this module (Trace)
    from bench.wire import WireClient

NEW_TOKENS = 256
TTFT_SLACK_MS = 50.0  # DESIGN.md's target, for every model
FAST_TTFT_SLACK_MS = 5.0  # issue 15's, on the fast model: what the product adds shows there
# The fast model's rows against raw (websocket and SSE, quiet and beside a CPU-bound process): medians of this
# many pairs. A pair costs half a second there, and a median of 2 moved by 10 ms with one slow request.
VS_RAW_ROUNDS = 8
# The quiet rows' third transport, without a target: the same SSE through the `openai` package.
SDK = "SSE through the openai package"
TURNS = 5
# Answer length per turn in the multi-turn test. A random-weight model's answer re-encodes into other ids than
# it was generated in, so a prompt cache that matches re-encoded tokens re-processes most of each answer (as
# mlx_lm.server does); the product keeps the generated ids. (Without a cache, turn 5 processes the whole
# history, ~5x turn 1.)
TURN_TOKENS = 64
TURN_ROUNDS = 3
TURN_TOLERANCE = 1.10  # TTFT of a few seconds on a busy 2-core machine moves by more than 50 ms
TURN_MESSAGE_TOKENS = 40

# Plain text the tiny tokenizer knows well; prompts are cut from it at a token count.
_TEXT = (
    "The quick brown fox jumps over the lazy dog. MLX is an array framework for machine learning on Apple "
    "silicon. Hello there! How are you today? This is a tiny language model with random weights, made for "
    "tests. A greeting is a good way to start a chat. What is the capital of France? Tell me a story about a "
    "dragon who lived in a cave by the sea, and the village that feared him. "
)


@dataclass
class Trace:
    """What one client saw of one generation."""

    started: float
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens in this message)
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str = ""
    usage_tokens: int | None = None  # the server's count, when a message may carry several tokens (SSE)
    # For the hop table (bench/hops.py): the product's request id, and wall clocks of the send and first text.
    request_id: str | None = None
    sent_ns: int | None = None
    first_ns: int | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else sum(n for _, n in self.arrivals)

    @property
    def ttft_ms(self) -> float | None:
        return (self.arrivals[0][0] - self.started) * 1000 if self.arrivals else None

    @property
    def decode_tps(self) -> float | None:
        if len(self.arrivals) < 2:
            return None
        span = self.arrivals[-1][0] - self.arrivals[0][0]
        # The first message's tokens arrived at t_first; every later token took decode time.
        return (self.tokens - self.arrivals[0][1]) / span if span > 0 else None

    @property
    def end_to_end_tps(self) -> float | None:
        if not self.arrivals:
            return None
        return self.tokens / (self.arrivals[-1][0] - self.started)

    def gaps_ms(self) -> list[float]:
        return [(b[0] - a[0]) * 1000 for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    def per_token_gaps_ms(self) -> list[float]:
        gaps = []
        for a, b in zip(self.arrivals, self.arrivals[1:], strict=False):
            gaps += [(b[0] - a[0]) * 1000 / b[1]] * b[1] if b[1] else []
        return gaps

    def summary(self) -> dict[str, Any]:
        gaps, per_token = self.gaps_ms(), self.per_token_gaps_ms()
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "tokens": self.tokens,
            "messages": len(self.arrivals),
            "ttft_ms": self.ttft_ms,
            "decode_tps": self.decode_tps,
            "end_to_end_tps": self.end_to_end_tps,
            "gap_ms_p50": percentile(gaps, 50),
            "gap_ms_p99": percentile(gaps, 99),
            "per_token_ms_p50": percentile(per_token, 50),
            "per_token_ms_p99": percentile(per_token, 99),
            "tokens_per_message": self.tokens / len(self.arrivals) if self.arrivals else None,
            "finish_reason": self.finish_reason,
            "request_id": self.request_id,
        }


def prompt_text(tokenizer: Any, tokens: int, variant: int) -> str:
    """About `tokens` tokens of text; each variant starts differently, so no prompt cache can reuse another
    variant's prefix (the chat template's few leading tokens aside)."""
    words = _TEXT.split()
    rotated = " ".join(words[variant % len(words) :] + words[: variant % len(words)])
    text = f"Request {variant}: "
    while len(tokenizer.encode(text)) < tokens:
        text += rotated + " "
    ids = tokenizer.encode(text)[:tokens]
    return tokenizer.decode(ids)


# ----------------------------------------------------------------------------- raw: mlx-lm in process


class Raw:
    def __init__(self, model_dir: Path) -> None:
        from mlx_lm import load

        self.model, self.tokenizer = load(str(model_dir))

    def speed(self) -> float:
        """Decode tokens/s on a short prompt (the warm-up, too): the figure the rows' titles give."""
        tokens = 32
        for _ in range(2):  # the first one compiles MLX's kernels
            trace = self.generate([{"role": "user", "content": "Hello there! Tell me a story."}], tokens)
        return trace.decode_tps or 0.0

    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> Trace:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        trace = Trace(time.perf_counter(), prompt_tokens=len(prompt))
        for response in stream_generate(
            self.model, self.tokenizer, prompt, max_tokens=max_tokens, sampler=make_sampler(temp=0.0)
        ):
            trace.arrivals.append((time.perf_counter(), 1))
            trace.finish_reason = response.finish_reason or trace.finish_reason
        return trace


def split_first_token_ms(
    model: Any, tokenizer: Any, prompt_tokens: int, cached_tokens: int, rounds: int = 3
) -> float:
    """Raw mlx-lm's time to the first token of a prompt of `prompt_tokens` whose first `cached_tokens` are in
    its KV cache already (median of `rounds`): the floor for a turn that any prompt cache reaching that split
    can reach. The cache is filled once, untimed, and trimmed back to `cached_tokens` after each round (a slow
    model takes a minute to fill it; a cache that cannot be trimmed is filled anew). The ids are cut from plain
    text: the time depends on the counts only."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

    text = tokenizer.encode(_TEXT)
    ids = (text * (prompt_tokens // len(text) + 1))[:prompt_tokens]
    cached = min(cached_tokens, prompt_tokens - 1)  # the model needs one token to produce the next logits

    def filled() -> list[Any]:
        cache = make_prompt_cache(model)
        if cached:
            model(mx.array(ids[:cached])[None], cache=cache)
            mx.eval([c.state for c in cache])
        return cache

    cache = filled()
    times = []
    for _ in range(rounds + 1):  # the first one compiles MLX's kernels for these shapes
        started = time.perf_counter()
        steps = generate_step(mx.array(ids[cached:]), model, prompt_cache=cache, max_tokens=1)
        next(steps)
        times.append((time.perf_counter() - started) * 1000)
        steps.close()
        if can_trim_prompt_cache(cache):
            trim_prompt_cache(cache, cache[0].offset - cached)
        else:  # a cache that cannot drop tokens (a rotating window, recurrent layers): filled anew
            cache = filled()
    return median(times[1:])


# ----------------------------------------------------------------------------- the product's websocket


class ChatSocket:
    """One logged-in socket on ws/chat/, as the chat page holds it."""

    def __init__(self, product: Product) -> None:
        self.product = product
        self.ws: Any = None

    async def __aenter__(self) -> ChatSocket:
        from websockets.asyncio.client import connect

        self.ws = await connect(
            f"{self.product.ws_url}/ws/chat/",
            origin=self.product.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": f"sessionid={self.product.session_cookie}"},
            max_size=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send(
        self,
        content: str,
        *,
        snapshot_id: int,
        max_tokens: int,
        conversation_id: int | None = None,
        record: str | None = None,
    ) -> tuple[Trace, int]:
        """Post a message; return what streamed back and the conversation id. `record`: the hop table's
        column for this request (bench/hops.py), if it goes in."""
        message: dict[str, Any] = {
            "type": "chat.send",
            "content": content,
            "snapshot_id": snapshot_id,
            "options": {"max_tokens": max_tokens, "temperature": 0.0},
        }
        if conversation_id is not None:
            message["conversation_id"] = conversation_id
        frame = json.dumps(message)
        trace = Trace(time.perf_counter())
        trace.sent_ns = time.time_ns()
        await self.ws.send(frame)
        seen = 0
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=600))
            now = time.perf_counter()
            kind = event.get("type")
            if kind == "chat.accepted":
                conversation_id = event["conversation_id"]
                trace.request_id = event.get("request_id")
            elif kind == "chat.started":
                trace.prompt_tokens = event.get("prompt_tokens")
                trace.cached_tokens = event.get("cached_tokens")
            elif kind == "chat.delta":
                # `tokens` is the running count: batching puts several tokens in one message.
                count = int(event.get("tokens", seen + 1))
                if not trace.arrivals:
                    trace.first_ns = time.time_ns()
                trace.arrivals.append((now, count - seen))
                seen = count
            elif kind == "chat.done":
                trace.finish_reason = event.get("finish_reason", "")
                hops.record(record, trace)
                return trace, int(conversation_id or 0)
            elif kind == "chat.error":
                raise RuntimeError(f"chat.error {event.get('code')}: {event.get('message')}")


def product_chat(
    product: Product, snapshot_id: int, content: str, max_tokens: int, record: str | None = None
) -> Trace:
    async def go() -> Trace:
        async with ChatSocket(product) as socket:
            trace, _ = await socket.send(
                content, snapshot_id=snapshot_id, max_tokens=max_tokens, record=record
            )
            return trace

    return asyncio.run(go())


def product_turns(product: Product, snapshot_id: int, messages: list[str], max_tokens: int) -> list[Trace]:
    async def go() -> list[Trace]:
        traces: list[Trace] = []
        conversation: int | None = None
        async with ChatSocket(product) as socket:
            for content in messages:
                trace, conversation = await socket.send(
                    content, snapshot_id=snapshot_id, max_tokens=max_tokens, conversation_id=conversation
                )
                traces.append(trace)
        return traces

    return asyncio.run(go())


# ----------------------------------------------------------------------------- mlx_lm.server multi-turn


def server_turns(server: MlxServer, model: str, messages: list[str], max_tokens: int) -> list[Trace]:
    from bench.openai_api import stream_completion

    async def go() -> list[Trace]:
        history: list[dict[str, str]] = []
        traces = []
        for content in messages:
            history.append({"role": "user", "content": content})
            trace, text = await stream_completion(
                f"{server.url}/v1", "none", model, history, max_tokens=max_tokens
            )
            history.append({"role": "assistant", "content": text})
            traces.append(trace)
        return traces

    return asyncio.run(go())


# ----------------------------------------------------------------------------- the benchmarks


def _ttft_row(
    section: Section,
    bench: str,
    metric: str,
    product: float | None,
    raw: float | None,
    slack: float,
    *,
    target: bool = True,
) -> None:
    section.add(
        Row(
            bench,
            metric,
            product,
            raw,
            "stream_generate",
            target=f"≤ raw + {slack:.0f} ms" if target else "",
            unit="ms",
            met=(product <= raw + slack if product and raw else None) if target else None,
        )
    )


def _stream_rows(section: Section, bench: str, raw: Trace, product: Trace, *, ttft_slack: float) -> None:
    r, p = raw.summary(), product.summary()
    _ttft_row(section, bench, "time to first token, ms", p["ttft_ms"], r["ttft_ms"], ttft_slack)
    section.add(
        Row(
            bench,
            "decode tokens/s",
            p["decode_tps"],
            r["decode_tps"],
            "stream_generate",
            target="≥ 0.95",
            met=p["decode_tps"] >= 0.95 * r["decode_tps"],
            note=f"{p['tokens']} vs {r['tokens']} tokens",
        )
    )
    section.add(
        Row(
            bench,
            "end-to-end tokens/s (incl. TTFT)",
            p["end_to_end_tps"],
            r["end_to_end_tps"],
            "stream_generate",
        )
    )
    section.add(
        Row(
            bench,
            "inter-token latency p50, ms (per token)",
            p["per_token_ms_p50"],
            r["per_token_ms_p50"],
            "stream_generate",
            unit="ms",
        )
    )
    section.add(
        Row(
            bench,
            "inter-token latency p99, ms (per token)",
            p["per_token_ms_p99"],
            r["per_token_ms_p99"],
            "stream_generate",
            unit="ms",
        )
    )
    section.add(
        Row(
            bench,
            "inter-message latency p50 / p99, ms (per socket message)",
            p["gap_ms_p50"],
            r["gap_ms_p50"],
            "stream_generate p50",
            unit="ms",
            note=f"p99 {p['gap_ms_p99']:.0f} ms, {p['tokens_per_message']:.2f} tokens/message",
        )
    )


def run_streaming(
    section: Section,
    *,
    new_tokens: int = NEW_TOKENS,
    raw: Raw,
    product: Product | None,
    snapshot_id: int | None,
    unavailable: str,
    prompts: dict[str, int],
    rounds: int,
    title: str = "",
    ttft_slack: float = TTFT_SLACK_MS,
) -> None:
    """`title`: the model, as the rows name it ("fast tiny model, ~400 tok/s raw"); `ttft_slack`: the first
    token's target over raw, ms."""
    messages_for = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    # Warm both: the model loaded, MLX's kernels compiled, the product's worker holding the model.
    raw.generate(messages_for(prompt_text(raw.tokenizer, 20, 999)), 8)
    live = product is not None and snapshot_id is not None
    if live:
        # Twice if need be: a first request that dies while the worker loads the model still gets it loaded.
        for attempt in range(2):
            try:
                product_chat(product, snapshot_id, prompt_text(raw.tokenizer, 20, 998 - attempt), 8)  # type: ignore[arg-type]
                break
            except Exception as exc:  # the measured rows say what happens to them
                section.raw.setdefault("warm_up_errors", []).append(f"{type(exc).__name__}: {exc}")
    variant = 0
    for label, tokens in prompts.items():
        for round_ in range(rounds if tokens <= 200 else 1):
            variant += 1
            bench = f"Chat{f' ({title})' if title else ''} {label}, round {round_ + 1}"
            text = prompt_text(raw.tokenizer, tokens, variant)
            raw_trace = raw.generate(messages_for(text), new_tokens)
            product_trace = None
            key = f"{label} #{round_ + 1}"
            section.raw[key] = {"raw": raw_trace.summary(), "product": None}
            if not live:
                section.unavailable(bench, unavailable)
                continue
            try:
                product_trace = kept_socket_chat(product, snapshot_id, text, new_tokens, "websocket")  # type: ignore[arg-type]
            except Exception as exc:  # a broken socket costs this row, not the section
                section.failed(bench, exc)
                continue
            section.raw[key]["product"] = product_trace.summary()
            _stream_rows(section, bench, raw_trace, product_trace, ttft_slack=ttft_slack)


def run_multi_turn(
    section: Section,
    *,
    turn_tokens: int = TURN_TOKENS,
    tokenizer: Any,
    product: Product | None,
    snapshot_id: int | None,
    unavailable: str,
    server: MlxServer | None,
    server_model: str,
    label: str = "",
    rounds: int = TURN_ROUNDS,
    model: Any = None,
) -> None:
    """`rounds` conversations of TURNS turns on each side (after one warm-up conversation, so turn 1 pays no
    first-request cost); each turn's TTFT is the median over the rounds. Every conversation has its own
    messages, so no side reuses another conversation's cache. With `model` (loaded in this process), the
    model alone is timed on the product's turn 1 and turn 5 (their prompt and cached token counts): the
    floor of the turn-5 ratio."""

    def conversation(number: int) -> list[str]:
        return [prompt_text(tokenizer, TURN_MESSAGE_TOKENS, 100 + 10 * number + i) for i in range(TURNS)]

    sides: dict[str, list[list[Trace]] | None] = {"product (websocket)": None, "mlx_lm.server": None}
    errors: dict[str, BaseException] = {}
    runs: dict[str, Any] = {}
    if product is not None and snapshot_id is not None:
        runs["product (websocket)"] = lambda messages: product_turns(
            product, snapshot_id, messages, turn_tokens
        )
    if server is not None:
        runs["mlx_lm.server"] = lambda messages: server_turns(server, server_model, messages, turn_tokens)
    for name, measure in runs.items():
        try:
            measure(conversation(0)[:2])  # warm-up
            sides[name] = [measure(conversation(r + 1)) for r in range(rounds)]
        except Exception as exc:  # the other side still gets measured
            errors[name] = exc
    suffix = f" ({label})" if label else ""
    medians: dict[str, list[float | None]] = {}
    for name, conversations in sides.items():
        bench = f"Multi-turn TTFT, {name}{suffix}"
        if name in errors:
            section.failed(bench, errors[name])
            continue
        if conversations is None:
            section.unavailable(
                bench, unavailable if name.startswith("product") else "mlx_lm.server not started"
            )
            continue
        section.raw[f"{name}{suffix}"] = [[t.summary() for t in traces] for traces in conversations]
        per_turn = [
            median([c[turn].ttft_ms for c in conversations if c[turn].ttft_ms is not None])
            for turn in range(TURNS)
        ]
        medians[name] = per_turn
        first, last = per_turn[0], per_turn[-1]
        sample = conversations[-1]
        section.add(
            Row(
                bench,
                f"turn {TURNS} vs turn 1 TTFT (median of {rounds}), ms",
                last,
                first,
                "turn 1",
                unit="ms",
                target=f"≤ {TURN_TOLERANCE:.2f}",
                met=(last <= first * TURN_TOLERANCE) if first and last else None,
                note=f"prompt {sample[-1].prompt_tokens} vs {sample[0].prompt_tokens} tokens"
                + (f", {sample[-1].cached_tokens} cached" if sample[-1].cached_tokens is not None else "")
                + f", answers of {turn_tokens} tokens",
            )
        )
    product_sides = sides.get("product (websocket)")
    if model is not None and product_sides:
        _floor_row(section, model, tokenizer, product_sides[-1], suffix, rounds)
    product_turn, server_turn = medians.get("product (websocket)"), medians.get("mlx_lm.server")
    if product_turn and server_turn:
        section.add(
            Row(
                f"Multi-turn TTFT, turn {TURNS}{suffix}",
                "product vs mlx_lm.server, ms",
                product_turn[-1],
                server_turn[-1],
                "mlx_lm.server",
                unit="ms",
            )
        )
    section.raw[f"turn_ttft_median_ms{suffix}"] = {name: medians.get(name) for name in sides}


def _floor_row(
    section: Section, model: Any, tokenizer: Any, turns: list[Trace], suffix: str, rounds: int
) -> None:
    """Raw mlx-lm on the product's own split of turn 1 and turn 5: what the model alone pays for turn 5's
    longer context, with the same tokens cached and the same ones new. No transport is in it, so it is the
    ratio a product with none would show."""
    first, last = turns[0], turns[-1]
    if first.prompt_tokens is None or last.prompt_tokens is None:
        return
    splits = [(t.prompt_tokens, t.cached_tokens or 0) for t in (first, last)]
    turn_1, turn_5 = (split_first_token_ms(model, tokenizer, p, c, rounds) for p, c in splits)  # type: ignore[arg-type]
    section.raw[f"raw floor{suffix}"] = {"splits": splits, "turn_1_ms": turn_1, "turn_5_ms": turn_5}
    section.add(
        Row(
            f"Multi-turn TTFT, raw mlx-lm in process, the product's split{suffix}",
            f"turn {TURNS} vs turn 1 first token (the model alone: the ratio's floor), ms",
            turn_5,
            turn_1,
            "turn 1",
            unit="ms",
            note=f"{splits[1][0] - splits[1][1]} new tokens over {splits[1][1]} cached vs "
            f"{splits[0][0] - splits[0][1]} over {splits[0][1]}",
        )
    )


# ----------------------------------------------------------------------------- a CPU-bound process beside it


class _KeptClient:
    """One openai client and event loop per server, as an IDE agent keeps its client: a request's first token is
    then what the server and the package add, not a new TCP connection and the package's client setup (they
    cost the first request ~5 ms here)."""

    def __init__(self, base_url: str, api_key: str) -> None:
        from openai import AsyncOpenAI

        self.loop = asyncio.new_event_loop()
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=900)


class _KeptSocket:
    """One logged-in chat socket per product, as the chat page keeps its socket open. Its event loop runs on a
    thread of its own, as a browser's does, so the socket answers the server's keep-alive pings between
    messages (the slow model's raw side takes longer than the server's 20 s ping timeout)."""

    def __init__(self, product: Product) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kept-socket", daemon=True)
        self.thread.start()
        self.socket = ChatSocket(product)
        self.run(self.socket.__aenter__())

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.socket.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


_kept: dict[tuple[str, str], _KeptClient] = {}
_kept_wire: dict[tuple[str, str], WireClient] = {}
_kept_sockets: dict[str, _KeptSocket] = {}


def close_kept_clients() -> None:
    """Close the kept clients and sockets (before their servers stop: their connections end cleanly)."""
    while _kept:
        _, kept = _kept.popitem()
        kept.loop.run_until_complete(kept.client.close())
        kept.loop.run_until_complete(kept.loop.shutdown_asyncgens())
        kept.loop.close()
    while _kept_wire:
        _kept_wire.popitem()[1].close()
    while _kept_sockets:
        _kept_sockets.popitem()[1].close()


def kept_socket_chat(
    product: Product, snapshot_id: int, content: str, max_tokens: int, record: str | None = None
) -> Trace:
    """One message on the socket kept for this product (each in a new conversation, as product_chat)."""
    kept = _kept_sockets.get(product.url)
    if kept is None:
        kept = _kept_sockets[product.url] = _KeptSocket(product)
    try:
        trace, _ = kept.run(
            kept.socket.send(content, snapshot_id=snapshot_id, max_tokens=max_tokens, record=record)
        )
    except Exception:  # this row fails; the next one gets a new socket
        del _kept_sockets[product.url]
        kept.close()
        raise
    return trace


def sse_chat(product: Product, model: str, content: str, max_tokens: int, record: str | None = None) -> Trace:
    """One streamed completion from the product's OpenAI-compatible API, read at the wire (bench/wire.py) on
    the connection kept for that server."""
    from bench.wire import WireClient

    base_url = f"{product.url}/v1"
    client = _kept_wire.get((base_url, product.api_key))
    if client is None:
        client = _kept_wire[(base_url, product.api_key)] = WireClient(base_url, product.api_key)
    return client.complete(
        model, [{"role": "user", "content": content}], max_tokens=max_tokens, record=record
    )


def sdk_chat(product: Product, model: str, content: str, max_tokens: int, record: str | None = None) -> Trace:
    """The same through the `openai` package, on the client kept for that server: what an application sees."""
    from bench.openai_api import stream_completion

    base_url = f"{product.url}/v1"
    kept = _kept.get((base_url, product.api_key))
    if kept is None:
        kept = _kept[(base_url, product.api_key)] = _KeptClient(base_url, product.api_key)
        kept.loop.run_until_complete(kept.client.models.list())  # its connection, open before the first row
    trace, _ = kept.loop.run_until_complete(
        stream_completion(
            base_url,
            product.api_key,
            model,
            [{"role": "user", "content": content}],
            max_tokens=max_tokens,
            client=kept.client,
            record=record,
        )
    )
    return trace


def run_beside_busy(
    section: Section,
    *,
    raw: Raw,
    product: Product | None,
    snapshot_id: int | None,
    product_model: str,
    unavailable: str,
    title: str,
    new_tokens: int,
    rounds: int,
    ttft_slack: float = TTFT_SLACK_MS,
) -> None:
    """The product over the websocket and over SSE against raw stream_generate on the same prompt, first on a
    quiet machine, then with a second CPU-bound process (a busy loop, one core's worth) running beside both
    sides: the ratios should hold. Medians over `rounds`; `ttft_slack` as run_streaming's.

    Each transport keeps its connection, as the chat page keeps its socket and an IDE agent its client. The
    SSE rows read the bytes at the wire (bench/wire.py): raw stream_generate has no client, so these rows time
    what the product adds. On the quiet machine the same requests also go through the `openai` package, for
    what an application sees (no target: the package's own time is in it)."""
    from bench.stack import busy_process

    messages = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    live = product is not None and snapshot_id is not None
    transports: dict[str, Callable[[str, str | None], Trace]] = {
        "websocket": lambda text, record: kept_socket_chat(product, snapshot_id, text, new_tokens, record),  # type: ignore[arg-type]
        "SSE": lambda text, record: sse_chat(product, product_model, text, new_tokens, record),  # type: ignore[arg-type]
        SDK: lambda text, record: sdk_chat(product, product_model, text, new_tokens, record),  # type: ignore[arg-type]
    }
    variant = 700
    for condition in ("quiet", "second CPU-bound process beside it"):
        with busy_process() if condition != "quiet" else contextlib.nullcontext():
            for transport, chat in transports.items():
                if transport == SDK and condition != "quiet":
                    continue
                bench = f"Chat ({title}) vs raw, {transport}, {condition}"
                pairs: list[tuple[Trace, Trace]] = []
                try:
                    for _ in range(rounds):
                        variant += 1
                        text = prompt_text(raw.tokenizer, 100, variant)
                        raw_trace = raw.generate(messages(text), new_tokens)
                        if not live:
                            break
                        record = f"{transport}, {'quiet' if condition == 'quiet' else 'CPU-bound neighbour'}"
                        pairs.append((raw_trace, chat(text, record)))
                except Exception as exc:  # a broken side costs this row, not the section
                    section.failed(bench, exc)
                    continue
                if not live:
                    section.unavailable(bench, unavailable)
                    continue
                section.raw[f"{transport}, {condition}"] = [
                    {"raw": r.summary(), "product": p.summary()} for r, p in pairs
                ]
                _ratio_rows(section, bench, pairs, ttft_slack=ttft_slack, targets=transport != SDK)


def _ratio_rows(
    section: Section, bench: str, pairs: list[tuple[Trace, Trace]], *, ttft_slack: float, targets: bool = True
) -> None:
    raw_ttft = median([r.ttft_ms for r, _ in pairs if r.ttft_ms is not None])
    product_ttft = median([p.ttft_ms for _, p in pairs if p.ttft_ms is not None])
    raw_tps = median([r.decode_tps for r, _ in pairs if r.decode_tps])
    product_tps = median([p.decode_tps for _, p in pairs if p.decode_tps])
    of = f"median of {len(pairs)}"
    _ttft_row(
        section, bench, f"time to first token, ms ({of})", product_ttft, raw_ttft, ttft_slack, target=targets
    )
    section.add(
        Row(
            bench,
            f"decode tokens/s ({of})",
            product_tps,
            raw_tps,
            "stream_generate",
            target="≥ 0.95" if targets else "",
            met=(product_tps >= 0.95 * raw_tps if product_tps and raw_tps else None) if targets else None,
        )
    )
