"""A profiling run cancelled (Ctrl-C) while it closes a client still closes it to the end."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from openai import AsyncOpenAI

from quantroute.profiler.runner import close_even_if_cancelled


class SlowClose:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.proceed = asyncio.Event()
        self.closed = False

    async def close(self) -> None:
        self.started.set()
        await self.proceed.wait()
        self.closed = True


async def test_a_cancellation_during_the_close_waits_for_it_then_propagates() -> None:
    client = SlowClose()
    task = asyncio.create_task(close_even_if_cancelled(cast(AsyncOpenAI, client)))
    await asyncio.wait_for(client.started.wait(), 5)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered; the close is still waiting
    assert not task.done() and not client.closed
    client.proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert client.closed
