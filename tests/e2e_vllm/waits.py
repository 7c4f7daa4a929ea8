"""Bounded polling for the vLLM tier: every wait has a deadline and says what it last saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float, interval_s: float = 0.25
) -> T:
    """Call ``probe`` until ``done(result)``; return that result or fail with the last one."""
    deadline = time.monotonic() + timeout_s
    last = probe()
    while not done(last):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:.0f} s; last seen: {last!r}")
        time.sleep(interval_s)
        last = probe()
    return last


async def apoll_until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout_s: float,
    interval_s: float = 0.25,
) -> T:
    """The asyncio twin of :func:`poll_until`."""
    deadline = time.monotonic() + timeout_s
    last = await probe()
    while not done(last):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:.0f} s; last seen: {last!r}")
        await asyncio.sleep(interval_s)
        last = await probe()
    return last
