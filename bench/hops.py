"""Where the product's time to first token goes: one request's hops, from the client's send to its first text.

The product stamps `time.time_ns()` as a request passes each step (models_app.services.inference, `hops`):
the web process when it received the request (`received`) and just before pushing it onto its queue's inbox
(`enqueue`), the inference worker when a slot started it (`picked`), when the engine loop took it (`engine`), when the
model, prompt and KV cache were ready and prefill began (`prefill`), at the first token (`first_token`) and
when that token's chat.delta was handed to the channel layer (`first_sent`). With LOG_HOPS=1 the worker logs
them in one line per request; this reads that log and adds the client's own stamps (`client_sent`,
`client_first`). Wall clocks of processes on one host compare, to well under a millisecond.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import median

if TYPE_CHECKING:
    from bench.chat import Trace

# (from, to, what happens between them)
HOPS: list[tuple[str, str, str]] = [
    ("client_sent", "received", "client → web process (socket, ASGI; websocket: auth at connect)"),
    ("received", "enqueue", "web: API key, rows, checks, routing"),
    ("enqueue", "picked", "inbox (Redis list) → worker intake → a slot starts it"),
    ("picked", "engine", "slot: snapshot row, picked mark → engine loop takes it"),
    ("engine", "prefill", "model, prompt, KV cache, chat.started"),
    ("prefill", "first_token", "prefill and first decode step"),
    ("first_token", "first_sent", "first text → channel layer"),
    ("first_sent", "client_first", "channel layer → web → client"),
]
_LINE = re.compile(r"request (\S+) hops (\{.*\})")


@dataclass
class Seen:
    transport: str  # the column of the hop table: "websocket", "SSE", ...
    trace: Trace


_seen: list[Seen] = []


def record(transport: str | None, trace: Trace) -> None:
    """Remember a product request for the hop table (transport None: not one of the product's)."""
    if transport and trace.request_id:
        _seen.append(Seen(transport, trace))


def clear() -> None:
    _seen.clear()


def worker_stamps(log: Path) -> dict[str, dict[str, int]]:
    """The worker's hop lines, by request id (the request's id with its dashes dropped, too: the OpenAI
    response id is the request id without them)."""
    found: dict[str, dict[str, int]] = {}
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return found
    for match in _LINE.finditer(text):
        try:
            stamps = json.loads(match.group(2))
        except ValueError:
            continue
        found[match.group(1)] = stamps
        found[match.group(1).replace("-", "")] = stamps
    return found


def table(log: Path) -> dict[str, Any]:
    """Median milliseconds of each hop per transport, from the requests recorded since clear()."""
    stamps = worker_stamps(log)
    per_transport: dict[str, list[dict[str, int]]] = {}
    for seen in _seen:
        trace = seen.trace
        worker = stamps.get(str(trace.request_id))
        if worker is None or trace.sent_ns is None or trace.first_ns is None:
            continue
        per_transport.setdefault(seen.transport, []).append(
            {**worker, "client_sent": trace.sent_ns, "client_first": trace.first_ns}
        )
    result: dict[str, Any] = {
        "requests": {t: len(r) for t, r in per_transport.items()},
        "hops": [],
        "stamps": per_transport,  # every request's, time_ns
    }
    for start, end, what in [*HOPS, ("client_sent", "client_first", "time to first token (client)")]:
        medians = {}
        for transport, requests in per_transport.items():
            spans = [(r[end] - r[start]) / 1e6 for r in requests if start in r and end in r]
            medians[transport] = median(spans)
        result["hops"].append({"from": start, "to": end, "what": what, "median_ms": medians})
    return result


def markdown(result: dict[str, Any], title: str) -> str:
    transports = list(result["requests"])
    if not transports:
        return f"Hops ({title}): no request was matched to the worker's hop log (LOG_HOPS)."
    head = " | ".join(f"{t} ({result['requests'][t]} req.), ms" for t in transports)
    lines = [
        f"Where the time to first token goes ({title}; medians, wall clocks of one host):",
        "",
        f"| Hop | What | {head} |",
        "| --- | --- | " + " | ".join("---:" for _ in transports) + " |",
    ]
    for hop in result["hops"]:
        cells = " | ".join(
            "-" if hop["median_ms"].get(t) is None else f"{hop['median_ms'][t]:.1f}" for t in transports
        )
        lines.append(f"| {hop['from']} → {hop['to']} | {hop['what']} | {cells} |")
    return "\n".join(lines)
