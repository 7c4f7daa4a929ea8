"""Closed-loop load generator: ``concurrency`` workers on one aiohttp session, one process.

Each worker sends a request, reads the body to its end and sends the next. A level runs a
warm-up (not counted), then a measurement window; no request starts after the window, and
in-flight ones finish (bounded by the request timeout). Requests/s counts successful completions
inside the window; latency and time-to-first-byte percentiles cover successful requests that started
inside it. Time to first byte is the first body chunk (for streams the first SSE event), measured
from just before the request is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

REQUEST_TIMEOUT_S = 30.0
PROMPT = "Summarise in one sentence why a load balancer needs health checks."
FILLER = "The service keeps a pool of servers and sends each request to one of them. "
BENCH_KEY = "qr-overhead-benchmark-key-0123456789abcdef"
JSON_HEADERS = {
    "Content-Type": "application/json",
    # ignored by the backends and the keyless gateway, checked by the "access" gateway
    "Authorization": f"Bearer {BENCH_KEY}",
}


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    model: str

    @property
    def chat_url(self) -> str:
        return self.url + "/v1/chat/completions"


@dataclass(frozen=True)
class Level:
    stream: bool
    concurrency: int
    warmup_s: float
    measure_s: float
    max_requests: int
    prompt_chars: int = 0


@dataclass
class Samples:
    latency: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    errors: int = 0
    started: int = 0


@dataclass(frozen=True)
class Stats:
    requests: int
    errors: int
    window_s: float
    rps: float
    lat_p50_ms: float
    lat_p99_ms: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float


def prompt(chars: int = 0) -> str:
    """The question, after a neutral context padding it to about ``chars`` characters."""
    pad = max(0, chars - len(PROMPT) - 2)
    if not pad:
        return PROMPT
    context = (FILLER * (pad // len(FILLER) + 1))[:pad]
    return context + "\n\n" + PROMPT


def payload(
    model: str, stream: bool, *, include_usage: bool = False, prompt_chars: int = 0
) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt(prompt_chars)}],
        "max_tokens": 64 if stream else 16,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``values`` need not be sorted); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def new_session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


async def fetch(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str, bytes]:
    """One request, whole body: (status, content type, raw bytes)."""
    async with session.post(url, data=body, headers=JSON_HEADERS) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def sequential(target: Target, requests: int, stream: bool) -> None:
    """``requests`` requests one after another on one connection (``calls.py`` and
    ``instructions.py`` count the proxy's work per request over these); any status but 200
    raises."""
    body = payload(target.model, stream)
    async with new_session(1) as session:
        for _ in range(requests):
            status, _, _ = await fetch(session, target.chat_url, body)
            if status != 200:
                raise RuntimeError(f"{target.name}: status {status}")


async def closed_loop(target: Target, requests: int, stream: bool, concurrency: int) -> None:
    """``requests`` requests, ``concurrency`` of them in flight at a time (a closed loop: each
    worker sends its next as its last is answered), as ``sequential`` does one at a time
    (``instructions.py --concurrency``); any status but 200 raises."""
    if concurrency <= 1:
        await sequential(target, requests, stream)
        return
    body = payload(target.model, stream)
    left = requests

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, _, _ = await fetch(session, target.chat_url, body)
            if status != 200:
                raise RuntimeError(f"{target.name}: answered {status}")

    async with new_session(concurrency) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, expected: int
) -> tuple[float, float, bool]:
    """Returns (seconds to first body byte, total seconds, ok)."""
    t0 = time.perf_counter()
    t1 = math.nan
    async with session.post(url, data=body, headers=JSON_HEADERS) as response:
        first = await response.content.readany()
        t1 = time.perf_counter() - t0
        size = len(first)
        while chunk := await response.content.readany():
            size += len(chunk)
        ok = response.status == 200 and size == expected
    return t1, time.perf_counter() - t0, ok


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    expected: int,
    window: tuple[float, float],
    level: Level,
    out: Samples,
) -> None:
    start, end = window
    while (now := time.perf_counter()) < end and out.started < level.max_requests:
        counted = now >= start
        out.started += counted
        try:
            ttfb, total, ok = await _one(session, url, body, expected)
        except (aiohttp.ClientError, TimeoutError):
            ttfb, total, ok = math.nan, math.nan, False
        if ok and start <= time.perf_counter() <= end:
            out.completed_in_window += 1
        if not counted:
            continue
        if ok:
            out.ttfb.append(ttfb)
            out.latency.append(total)
        else:
            out.errors += 1


def summarise(samples: Samples, window_s: float) -> Stats:
    ms = 1000.0
    return Stats(
        requests=len(samples.latency),
        errors=samples.errors,
        window_s=window_s,
        rps=samples.completed_in_window / window_s,
        lat_p50_ms=percentile(samples.latency, 0.50) * ms,
        lat_p99_ms=percentile(samples.latency, 0.99) * ms,
        ttfb_p50_ms=percentile(samples.ttfb, 0.50) * ms,
        ttfb_p99_ms=percentile(samples.ttfb, 0.99) * ms,
    )


async def run_level(
    target: Target,
    level: Level,
    expected: int,
    on_window: Callable[[float, float], Awaitable[None]] | None = None,
) -> Stats:
    """Run one level against ``target``; ``on_window(start, end)`` runs beside it (monitoring)."""
    body = payload(target.model, level.stream, prompt_chars=level.prompt_chars)
    samples = Samples()
    async with new_session(level.concurrency) as session:
        start = time.perf_counter() + level.warmup_s
        end = start + level.measure_s
        side = asyncio.ensure_future(on_window(start, end)) if on_window else None
        workers = [
            _worker(session, target.chat_url, body, expected, (start, end), level, samples)
            for _ in range(level.concurrency)
        ]
        bound = level.warmup_s + level.measure_s + REQUEST_TIMEOUT_S + 5.0
        await asyncio.wait_for(asyncio.gather(*workers), bound)
        if side is not None:
            await asyncio.wait_for(side, 10.0)
    return summarise(samples, level.measure_s)


async def hold_streams(
    target: Target, n: int, on_open: Callable[[], Awaitable[None]], timeout_s: float = 30.0
) -> int:
    """Open ``n`` streams at once (the backends slowed down), wait until each has its first
    event, run ``on_open`` (the RSS sample) while all are open, then close them all (the
    clients go away mid-stream). Returns how many were open at the sample."""
    body = payload(target.model, True)
    opened, release = 0, asyncio.Event()
    all_open = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened
        async with session.post(target.chat_url, data=body, headers=JSON_HEADERS) as response:
            if response.status == 200 and await response.content.readany():
                opened += 1
                if opened == n:
                    all_open.set()
            await release.wait()
            response.close()

    async with new_session(n) as session:
        tasks = [asyncio.ensure_future(one(session)) for _ in range(n)]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), timeout_s)
            await on_open()
            return opened
        finally:
            release.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout_s)
