"""`quantroute demo --traffic`: a mixed workload through the gateway and a live view of the fleet."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict, deque
from typing import Any

import openai
from fastapi import FastAPI
from rich.console import Console
from rich.live import Live
from rich.table import Table

TASKS = {
    "coding": "Write a python function that merges two sorted lists. ",
    "reasoning": "How many minutes are in 3 days? Think step by step. ",
    "extraction": "Extract the name and email fields as JSON from: Ana Li, ana@example.com. ",
    "chat": "Tell me something nice about autumn. ",
}
RATE_PER_S = 8.0
WINDOW = 500


class Stats:
    def __init__(self) -> None:
        self.share: Counter[str] = Counter()
        self.ttft: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))
        self.errors: Counter[str] = Counter()


async def _one(client: openai.AsyncOpenAI, stats: Stats, rng: random.Random) -> None:
    task = rng.choice(list(TASKS))
    long_tail = rng.random() < 0.08
    content = TASKS[task] + (
        "Context: " + "lorem ipsum " * rng.randint(2000, 9000) if long_tail else ""
    )
    started = time.perf_counter()
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": content}],
            max_tokens=rng.randint(32, 256),
            stream=True,
        )
        backend = raw.headers.get("x-quantroute-backend", "?")
        first = True
        async for _ in raw.parse():
            if first:
                stats.ttft[backend].append(time.perf_counter() - started)
                first = False
        stats.share[backend] += 1
    except openai.APIStatusError as exc:
        stats.errors[str(exc.status_code)] += 1
    except openai.APIConnectionError:
        stats.errors["connection"] += 1


def _p99(values: deque[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000:.0f} ms"


def _table(app: FastAPI, stats: Stats, time_scale: float) -> Table:
    total = sum(stats.share.values()) or 1
    table = Table(
        title=f"quantroute demo: live fleet (simulated time x{time_scale:g}); errors: {dict(stats.errors) or 'none'}"
    )
    for col in (
        "backend",
        "state",
        "KV usage",
        "running",
        "waiting",
        "share",
        "p99 TTFT (wall)",
        "steered away",
    ):
        table.add_column(col)
    for row in app.state.store.admin_view():
        m: dict[str, Any] = row["metrics"] or {}
        kv = m.get("kv_cache_usage_perc")
        steered = row["decisions"]["steered_away"]
        table.add_row(
            row["id"],
            row["state"],
            "-" if kv is None else f"{kv:.0%}",
            f"{m.get('num_requests_running', 0):.0f}",
            f"{m.get('num_requests_waiting', 0):.0f}",
            f"{stats.share[row['id']] / total:.0%}",
            _p99(stats.ttft[row["id"]]),
            ", ".join(f"{k}:{v}" for k, v in steered.items()) or "-",
        )
    return table


async def drive_and_show(
    url: str, app: FastAPI, console: Console, time_scale: float, seed: int = 7
) -> None:
    rng = random.Random(seed)
    stats = Stats()
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="demo", max_retries=0)
    pending: set[asyncio.Task[None]] = set()
    try:
        with Live(_table(app, stats, time_scale), console=console, refresh_per_second=4) as live:
            while True:
                await asyncio.sleep(rng.expovariate(RATE_PER_S))
                if len(pending) < 256:
                    task = asyncio.create_task(_one(client, stats, rng))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                live.update(_table(app, stats, time_scale))
    finally:
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await client.close()
