"""Prompts and a bounded background load for the vLLM tier."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai

WORDS = ("the", "kalo", "mira", "tuvel", "and", "sadorpe", "an", "of", "quizen", "ra")


def filler(words: int, salt: str = "") -> str:
    """``words`` words of text the tiny tokenizer knows (each word is one or two tokens)."""
    body = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    return f"{salt} {body}" if salt else body


@asynccontextmanager
async def kv_filling_load(
    base_url: str, model: str, workers: int, max_seconds: float
) -> AsyncIterator[None]:
    """Keep ``workers`` streaming completions running against one vLLM server until exit.

    Each request is short enough to fit one 128-token KV block, so with more workers than
    blocks the cache stays full and the rest wait. Bounded: at most 200 requests per worker
    and ``max_seconds`` of wall time; on exit the
    requests in flight get up to 60 s to finish before being cancelled.
    """
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    stop = asyncio.Event()

    async def worker(index: int) -> None:
        for turn in range(200):
            if stop.is_set():
                return
            stream = await client.completions.create(
                model=model,
                prompt=filler(12, salt=f"w{index}t{turn}"),
                max_tokens=90,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            async for _ in stream:
                pass

    tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
    stopper = asyncio.get_running_loop().call_later(max_seconds, stop.set)
    try:
        yield
    finally:
        stopper.cancel()
        stop.set()  # let requests in flight finish, then cancel whatever is left
        await asyncio.wait(tasks, timeout=60)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, openai.APIError):
                await task
        await client.close()
