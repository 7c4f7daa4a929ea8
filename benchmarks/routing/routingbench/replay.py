"""Replay a trace through the gateway: open-loop arrivals, streaming chat completions over HTTP.

Each request is sent at its trace time (divided by the time scale) whether or not earlier ones
have finished, as an ``aiohttp`` streaming POST asking for usage. Recorded per request, in wall
seconds from the start of the replay: when it was due and sent, the first SSE data line
(time to first token), the end, the status, the gateway's error code, the backend
(``x-quantroute-backend``) and the output tokens the usage chunk reports. The client does not
retry a response: a 503 is a rejection. Only a send that fails before any response (a kept-alive
connection the server closed at that moment) is sent again, at most twice, and counted.

A turn of a conversation (a row with ``after``) is closed-loop within its session: it is sent
``think_s`` (simulated) after the previous turn's answer ended, never before, and its due time
is that moment. With ``session_header`` it carries ``x-session-id: <session>``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from routingbench.workload import TraceRequest, messages_for

CONNECT_ATTEMPTS = 3


@dataclass
class Outcome:
    id: str
    status: int
    """HTTP status; 0 when the connection failed or timed out."""
    error: str | None = None
    backend: str | None = None
    decision: str | None = None
    """The gateway's ``x-quantroute-decision`` header (scores, rejected backends and why)."""
    due: float = 0.0
    sent: float = 0.0
    first: float | None = None
    end: float | None = None
    output_tokens: int = 0
    finish_reason: str | None = None
    detail: str | None = None
    """The error body's message, or the stream's error event."""
    reconnects: int = 0
    """Sends repeated because the connection failed before any response (never after)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """``usage.prompt_tokens_details.cached_tokens`` (0 when the backend reports none)."""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.first is not None


def body_for(request: TraceRequest, model: str) -> bytes:
    body = {
        "model": model,
        "messages": messages_for(request),
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _error(raw: bytes) -> tuple[str, str]:
    """(code, message) of an OpenAI-style error body."""
    try:
        err = json.loads(raw).get("error", {})
    except (ValueError, AttributeError):
        return "unparsable_error", raw[:200].decode(errors="replace")
    return str(err.get("code") or err.get("type") or "error"), str(err.get("message", ""))[:200]


async def _read_stream(response: aiohttp.ClientResponse, out: Outcome, t0: float) -> None:
    async for line in response.content:
        if not line.startswith(b"data:"):
            continue
        if out.first is None:
            out.first = time.monotonic() - t0
        if b'"error"' in line[:40]:
            out.error = "stream_error"
            out.detail = line[:200].decode(errors="replace")
        elif b'"usage":{' in line:
            usage = json.loads(line[5:]).get("usage") or {}
            out.output_tokens = int(usage.get("completion_tokens", 0))
            out.prompt_tokens = int(usage.get("prompt_tokens", 0))
            details = usage.get("prompt_tokens_details") or {}
            out.cached_tokens = int(details.get("cached_tokens") or 0)
        elif b'"finish_reason":"' in line:
            out.finish_reason = json.loads(line[5:])["choices"][0]["finish_reason"]


async def _one(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    out: Outcome,
    t0: float,
) -> None:
    out.sent = time.monotonic() - t0
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            async with session.post(url, data=body, headers=headers) as response:
                out.status = response.status
                out.backend = response.headers.get("x-quantroute-backend")
                out.decision = response.headers.get("x-quantroute-decision")
                if response.status != 200:
                    out.error, out.detail = _error(await response.read())
                else:
                    await _read_stream(response, out, t0)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            if out.status == 0 and attempt + 1 < CONNECT_ATTEMPTS:
                out.reconnects += 1  # a kept-alive connection the gateway had just closed
                continue
            out.error = f"client:{type(exc).__name__}: {exc}"[:120]
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.error = f"client:{type(exc).__name__}: {exc}"[:120]
        break
    out.end = time.monotonic() - t0


async def replay(
    base_url: str,
    rows: Sequence[TraceRequest],
    model_for: Callable[[TraceRequest], str],
    *,
    time_scale: float,
    timeout_s: float,
    task_header: bool = False,
    session_header: bool = False,
) -> tuple[list[Outcome], float]:
    """Send every row at ``row.t / time_scale`` (a later turn: after its previous turn and
    think time); returns the outcomes and the wall duration."""
    bodies = [body_for(r, model_for(r)) for r in rows]
    url = base_url + "/v1/chat/completions"
    outcomes = [Outcome(r.id, 0, due=r.t / time_scale) for r in rows]
    done = {r.id: asyncio.Event() for r in rows}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(row: TraceRequest, body: bytes, out: Outcome, t0: float) -> None:
        try:
            if row.after is not None and row.after in done:
                await done[row.after].wait()
                await asyncio.sleep((row.think_s or 0.0) / time_scale)
                out.due = time.monotonic() - t0
            headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
            if task_header:
                headers["x-quantroute-task"] = row.task
            if session_header and row.session is not None:
                headers["x-session-id"] = row.session
            await _one(session, url, body, headers, out, t0)
        finally:
            done[row.id].set()

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: list[asyncio.Task[None]] = []
        t0 = time.monotonic()
        for row, body, out in zip(rows, bodies, outcomes, strict=True):
            if row.after is None:
                delay = out.due - (time.monotonic() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(row, body, out, t0)))
        await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
    return outcomes, wall
