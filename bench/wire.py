"""The product's SSE read at the wire: a plain HTTP/1.1 client, as curl is, for the rows against raw mlx-lm.

Raw `stream_generate` has no client at all, so the rows that hold the product to it (TTFT ≤ raw + 5 ms, decode ≥
0.95) time what the product sends, as it arrives, with as little of the client's own in between as can be:
one kept-alive `http.client` connection, the request written in one send, each read handed back as soon as
bytes come (`read1`), and only the `data:` lines parsed. The `openai` package, as an application would use it,
stays in the OpenAI API rows, where the product and mlx_lm.server both pay for it, and in one row without a
target beside these: on a kept client it added ~2 ms to each request's first token on this kind of machine
(building the request, then validating each chunk into its models; ~3 ms more on a new client), and its CPU
per chunk runs on the same two cores as the engine.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

from bench import hops
from bench.chat import Trace


class WireClient:
    """One kept-alive connection to a server's `/v1/chat/completions`, read as the bytes arrive."""

    def __init__(self, base_url: str, api_key: str) -> None:
        parts = urlsplit(base_url)
        self.path = f"{parts.path.rstrip('/')}/chat/completions"
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=900)

    def close(self) -> None:
        self.connection.close()

    def complete(
        self, model: str, messages: list[dict[str, str]], *, max_tokens: int, record: str | None = None
    ) -> Trace:
        """One streamed completion, greedy, with its usage: when each text chunk arrived. `record`: the hop
        table's column (bench/hops.py)."""
        body = json.dumps(
            {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        for retry in (True, False):
            trace = Trace(time.perf_counter())
            trace.sent_ns = time.time_ns()
            try:
                self.connection.request("POST", self.path, body=body, headers=self.headers)
                response = self.connection.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                # The server closed the kept connection while it was idle (uvicorn after 5 s): nothing of the
                # request was read, so it goes once more on a new one, timed from there.
                self.connection.close()
                if not retry:
                    raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        pending = b""
        done = False
        while not done:
            data = response.read1(65536)
            if not data:
                break
            now = time.perf_counter()
            lines = (pending + data).split(b"\n")
            pending = lines.pop()  # an unfinished line waits for the next read
            for line in lines:
                if not line.startswith(b"data: "):
                    continue  # blank separators and comments (keep-alives)
                if line == b"data: [DONE]":
                    done = True
                    break
                self._chunk(trace, json.loads(line[6:]), now)
        response.read()  # the end of the chunked body: the connection is reused
        hops.record(record, trace)
        return trace

    @staticmethod
    def _chunk(trace: Trace, chunk: dict[str, Any], now: float) -> None:
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                if not trace.arrivals:
                    trace.first_ns = time.time_ns()
                    trace.request_id = chunk["id"].split("-", 1)[-1]
                trace.arrivals.append((now, 1))
            if choice.get("finish_reason"):
                trace.finish_reason = choice["finish_reason"]
        usage = chunk.get("usage")
        if usage:
            trace.prompt_tokens = usage.get("prompt_tokens")
            trace.usage_tokens = usage.get("completion_tokens")
            trace.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
