"""Prompts and a bounded background load for the vLLM tier."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

WORDS = ("the", "kalo", "mira", "tuvel", "and", "sadorpe", "an", "of", "quizen", "ra")
LOAD_MAX_TOKENS = 90  # with a ~30-token prompt: under 128 tokens, one KV block per request
LOAD_TURNS = 2000
"""Requests per load worker at most: the wall-time bound is the one meant to end the load. On a
quiet machine the tiny model answers a request in a fraction of a second, and 200 per worker
ran out before a test was done with the load (a CI run saw the cache empty mid-test)."""


def filler(words: int, salt: str = "") -> str:
    """``words`` words of text the tiny tokenizer knows (each word is one or two tokens)."""
    body = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    return f"{salt} {body}" if salt else body


@dataclass
class LoadOutcomes:
    """What :func:`one_block_load` has seen so far (for a test's failure message)."""

    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    workers_done: int = 0

    def __str__(self) -> str:
        first = "; ".join(self.failures[:3])
        return (
            f"load: {self.ok} answered, {self.failed} failed, {self.workers_done} workers done"
            + (f" (first failures: {first})" if first else "")
        )


@asynccontextmanager
async def one_block_load(
    base_url: str, model: str, workers: int, max_seconds: float
) -> AsyncIterator[LoadOutcomes]:
    """Keep ``workers`` one-KV-block completions in flight against one vLLM server until exit.

    Each worker sends non-streaming requests back to back (cheap for this process, so the
    load stays steady on a busy machine). With more workers than free blocks the cache stays
    full and the rest wait in vLLM's queue. A failed request (a timeout on a slow machine) is
    counted and the worker goes on, so the load does not fade silently; if every request failed,
    exit raises. Bounded: at most LOAD_TURNS requests per worker and ``max_seconds`` of wall time; on
    exit requests in flight get 60 s, then are cancelled.
    """
    limits = httpx.Limits(max_connections=workers + 1)
    client = httpx.AsyncClient(base_url=base_url, timeout=120.0, limits=limits)
    stop = asyncio.Event()
    outcomes = LoadOutcomes()

    async def worker(index: int) -> None:
        for turn in range(LOAD_TURNS):
            if stop.is_set():
                break
            body = {
                "model": model,
                "prompt": filler(12, salt=f"w{index}t{turn}"),
                "max_tokens": LOAD_MAX_TOKENS,
                "ignore_eos": True,
            }
            try:
                (await client.post("/v1/completions", json=body)).raise_for_status()
                outcomes.ok += 1
            except httpx.HTTPError as error:
                outcomes.failed += 1
                said = error.response.text[:200] if isinstance(error, httpx.HTTPStatusError) else ""
                outcomes.failures.append(f"{error!r} {said}".strip())
        outcomes.workers_done += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
    stopper = asyncio.get_running_loop().call_later(max_seconds, stop.set)
    try:
        yield outcomes
    finally:
        stopper.cancel()
        stop.set()
        await asyncio.wait(tasks, timeout=60)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task
        await client.aclose()
    if outcomes.failed and not outcomes.ok:
        raise AssertionError(f"the background load never got an answer: {outcomes}")
