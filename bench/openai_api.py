"""4. The OpenAI-compatible API: the product's `/v1/chat/completions` vs mlx_lm.server's, same model, greedy,
streaming (SSE, read with the `openai` package as an application would), with 1 and then 4 clients at once.
With 4 clients, mlx-lm's BatchGenerator in this process on the same prompts is the ceiling continuous batching
can reach (the product's engine loop runs one).

TTFT is from sending the request to the first chunk with text; decode tokens/s per client is
(completion tokens - 1) / (last text chunk - first text chunk), with the token count from the final usage
chunk (`stream_options.include_usage`), since one chunk may carry several tokens; aggregate tokens/s is every
client's completion tokens over the wall time from the first request to the last chunk.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import hops
from bench.chat import Trace, prompt_text
from bench.report import Row, Section, median
from bench.stack import MlxServer, Product

MAX_TOKENS = 128
PROMPT_TOKENS = 100


async def stream_completion(
    base_url: str,
    api_key: str,
    model: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int,
    client: Any = None,
    record: str | None = None,
) -> tuple[Trace, str]:
    """One streamed chat completion: what the client saw, and the text. `record`: the hop table's column for
    this request (bench/hops.py), if it goes in (the product's response id is its request id)."""
    from openai import AsyncOpenAI

    own = client is None
    client = client or AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=900)
    trace = Trace(time.perf_counter())
    trace.sent_ns = time.time_ns()
    parts: list[str] = []
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            max_tokens=max_tokens,
            temperature=0.0,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta and choice.delta.content:
                    if not trace.arrivals:
                        trace.first_ns = time.time_ns()
                        trace.request_id = chunk.id.split("-", 1)[-1]
                    trace.arrivals.append((now, 1))
                    parts.append(choice.delta.content)
                if choice.finish_reason:
                    trace.finish_reason = choice.finish_reason
            if chunk.usage:
                trace.prompt_tokens = chunk.usage.prompt_tokens
                trace.usage_tokens = chunk.usage.completion_tokens
                details = getattr(chunk.usage, "prompt_tokens_details", None)
                trace.cached_tokens = getattr(details, "cached_tokens", None) if details else None
    finally:
        if own:
            await client.close()
    hops.record(record, trace)
    return trace, "".join(parts)


async def _clients(
    base_url: str, api_key: str, model: str, prompts: list[str], max_tokens: int, record: str | None
) -> tuple[list[Trace], float]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=900)
    try:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                stream_completion(
                    base_url,
                    api_key,
                    model,
                    [{"role": "user", "content": p}],
                    max_tokens=max_tokens,
                    client=client,
                    record=record,
                )
                for p in prompts
            )
        )
        wall = time.perf_counter() - started
    finally:
        await client.close()
    return [trace for trace, _ in results], wall


def measure(
    base_url: str, api_key: str, model: str, prompts: list[str], max_tokens: int, record: str | None = None
) -> dict[str, Any]:
    traces, wall = asyncio.run(_clients(base_url, api_key, model, prompts, max_tokens, record))
    summaries = [t.summary() for t in traces]
    tokens = sum(t.tokens for t in traces)
    return {
        "clients": summaries,
        "wall_seconds": wall,
        "ttft_ms_median": median([s["ttft_ms"] for s in summaries if s["ttft_ms"] is not None]),
        "ttft_ms_max": max((s["ttft_ms"] for s in summaries if s["ttft_ms"] is not None), default=None),
        "per_client_tps_median": median([s["decode_tps"] for s in summaries if s["decode_tps"]]),
        "aggregate_tps": tokens / wall if wall > 0 else None,
        "tokens": tokens,
    }


def _rounds(rounds: int) -> str:
    return f"median of {rounds} rounds; " if rounds > 1 else ""


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several measures of one side as one: each figure's median (the max TTFT: the largest)."""
    if len(runs) == 1:
        return runs[0]

    def figure(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return median(values) if values else None

    merged = {key: figure(key) for key in ("ttft_ms_median", "per_client_tps_median", "aggregate_tps")}
    maxima = [r["ttft_ms_max"] for r in runs if r.get("ttft_ms_max") is not None]
    return {
        **runs[0],  # what else one measure says (the in-process ceiling has its own keys)
        **merged,
        "ttft_ms_max": max(maxima, default=None),
        "rounds": runs,
    }


def batch_generator(raw: Any, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """The ceiling of continuous batching here: mlx-lm's BatchGenerator in this process, the same prompts
    (chat template applied) inserted at once, greedy, as the product's loop runs them. No HTTP, no
    detokenizing, no stop strings."""
    from mlx_lm.generate import BatchGenerator

    tokenizer = raw.tokenizer
    encoded = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
        for p in prompts
    ]
    generator = BatchGenerator(
        raw.model,
        stop_tokens=[[t] for t in tokenizer.eos_token_ids],
        completion_batch_size=max(8, len(prompts)),
        prefill_batch_size=max(8, len(prompts)),
    )
    try:
        started = time.perf_counter()
        uids = generator.insert(encoded, max_tokens=[max_tokens] * len(encoded))
        traces = {uid: Trace(started, prompt_tokens=len(e)) for uid, e in zip(uids, encoded, strict=True)}
        left = set(uids)
        while left:
            for response in generator.next_generated():
                traces[response.uid].arrivals.append((time.perf_counter(), 1))
                if response.finish_reason:
                    traces[response.uid].finish_reason = response.finish_reason
                    left.discard(response.uid)
        wall = time.perf_counter() - started
    finally:
        generator.close()
    summaries = [t.summary() for t in traces.values()]
    tokens = sum(t.tokens for t in traces.values())
    return {
        "clients": summaries,
        "wall_seconds": wall,
        "ttft_ms_median": median([s["ttft_ms"] for s in summaries if s["ttft_ms"] is not None]),
        "aggregate_tps": tokens / wall if wall > 0 else None,
        "tokens": tokens,
    }


def run(
    section: Section,
    *,
    max_tokens: int = MAX_TOKENS,
    tokenizer: Any,
    raw: Any = None,
    product: Product | None,
    product_model: str,
    unavailable: str,
    server: MlxServer | None,
    server_model: str,
    title: str = "",
    rounds: int = 1,
) -> None:
    """`title`: the model, as the rows name it ("fast tiny model, ~400 tok/s raw"). `rounds`: each side
    measured that many times on fresh prompts, interleaved, and each figure is the median (one request's
    first token is a sample of one: on the fast model a scheduling hiccup doubles it)."""
    sides: dict[str, tuple[str, str, str] | None] = {
        "product": (f"{product.url}/v1", product.api_key, product_model) if product is not None else None,
        "mlx_lm.server": (f"{server.url}/v1", "none", server_model) if server is not None else None,
    }
    # Warm-up: models loaded, kernels compiled, connections not yet pooled (each measure opens its own).
    errors: dict[str, BaseException] = {}
    for name, side in sides.items():
        # Twice if need be: a first request that fails while the model loads still gets it loaded.
        for attempt in range(2 if side is not None else 0):
            try:
                measure(*side, [prompt_text(tokenizer, 20, 500 - attempt)], 8)  # type: ignore[misc]
                break
            except Exception as exc:  # the measured rows say what happens to them
                section.raw.setdefault("warm_up_errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
    variant = 600
    for clients in (1, 4):
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*sides, "BatchGenerator")}
        for _ in range(rounds):
            prompts = [prompt_text(tokenizer, PROMPT_TOKENS, variant + i) for i in range(clients)]
            variant += clients
            for name, side in sides.items():
                # The same prompts to both: neither has seen them, so no prompt cache helps either.
                if side is not None and name not in errors:
                    # The product's requests go into the hop table (bench/hops.py), a column per count.
                    record = None
                    if name == "product":
                        record = "SSE" if clients == 1 else f"SSE, {clients} clients"
                    try:
                        runs[name].append(measure(*side, prompts, max_tokens, record))
                    except Exception as exc:
                        errors[name] = exc
            if raw is not None and clients > 1:
                # The in-process ceiling, measured between the two servers' runs of the same prompts.
                try:
                    runs["BatchGenerator"].append(batch_generator(raw, prompts, max_tokens))
                except Exception as exc:
                    section.failed(f"OpenAI API ({title}), {clients} clients (BatchGenerator)", exc)
        results: dict[str, dict[str, Any] | None] = {
            name: _median_of(measured) if measured and name not in errors else None
            for name, measured in runs.items()
        }
        section.raw[f"{clients} client(s)"] = results
        of = f" ({title})" if title else ""
        bench = f"OpenAI API{of}, {clients} client{'s' if clients > 1 else ''}"
        p, s = results["product"], results["mlx_lm.server"]
        if p is None or s is None:
            for name, missing in (("product", unavailable), ("mlx_lm.server", "mlx_lm.server not started")):
                if name in errors:
                    section.failed(f"{bench} ({name})", errors[name])
                elif results[name] is None:
                    section.unavailable(f"{bench} ({name})", missing)
            continue
        section.add(
            Row(
                bench,
                "TTFT median, ms",
                p["ttft_ms_median"],
                s["ttft_ms_median"],
                "mlx_lm.server",
                unit="ms",
                target="≤ 1.0",
                met=p["ttft_ms_median"] <= s["ttft_ms_median"],
                note=f"{_rounds(rounds)}max {p['ttft_ms_max']:.0f} vs {s['ttft_ms_max']:.0f} ms",
            )
        )
        section.add(
            Row(
                bench,
                "per-client decode tokens/s (median)",
                p["per_client_tps_median"],
                s["per_client_tps_median"],
                "mlx_lm.server",
                target="≥ 1.0",
                met=p["per_client_tps_median"] >= s["per_client_tps_median"],
            )
        )
        section.add(
            Row(
                bench,
                "aggregate tokens/s (all clients, wall clock)",
                p["aggregate_tps"],
                s["aggregate_tps"],
                "mlx_lm.server",
                target="≥ 1.0",
                met=p["aggregate_tps"] >= s["aggregate_tps"],
                note=f"{_rounds(rounds)}{p['tokens']} vs {s['tokens']} tokens",
            )
        )
        b = results.get("BatchGenerator")
        if b is not None:
            section.add(
                Row(
                    bench,
                    "aggregate tokens/s vs in-process BatchGenerator",
                    p["aggregate_tps"],
                    b["aggregate_tps"],
                    "mlx-lm BatchGenerator in process",
                    target="≥ 0.85",
                    met=p["aggregate_tps"] >= 0.85 * b["aggregate_tps"],
                    note=f"{p['tokens']} vs {b['tokens']} tokens; its TTFT median {b['ttft_ms_median']:.0f} ms",
                )
            )
