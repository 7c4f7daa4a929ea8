"""DisconnectGuard: a client that goes away cancels the guarded work; one that stays costs no task.

Narrow unit tests on a fake ``receive`` shaped like uvicorn's (it waits on an asyncio event); the
end-to-end cases (a client leaving mid-request or mid-stream aborts the backend's work) are in
tests/faults and tests/sim over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator

import pytest
from starlette.types import Message

from quantroute.errors import ClientDisconnected
from quantroute.proxy.disconnect import race_disconnect


class FakeConnection:
    """``receive`` as uvicorn's: waits on an event, then says ``http.disconnect`` once gone."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.gone = False
        self.body_messages = 0

    async def receive(self) -> Message:
        if not self.gone:
            await self.event.wait()
            self.event.clear()
        if self.gone:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    def leave(self) -> None:
        self.gone = True
        self.event.set()


async def test_a_client_that_leaves_cancels_the_work() -> None:
    conn = FakeConnection()
    started = asyncio.Event()
    cancelled = False

    async def work() -> str:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled = True
            raise
        return "done"

    async def leave_when_started() -> None:
        await started.wait()
        conn.leave()

    leaver = asyncio.create_task(leave_when_started())
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(race_disconnect(conn.receive, work()), 5)
    await leaver
    assert cancelled


async def test_a_client_already_gone_cancels_at_the_first_wait() -> None:
    conn = FakeConnection()
    conn.leave()
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(race_disconnect(conn.receive, asyncio.sleep(30)), 5)


async def test_a_client_that_stays_costs_no_task_and_leaves_no_waiter() -> None:
    conn = FakeConnection()
    before = len(asyncio.all_tasks())
    seen: list[int] = []

    async def work() -> str:
        seen.append(len(asyncio.all_tasks()))
        await asyncio.sleep(0.01)
        return "done"

    assert await race_disconnect(conn.receive, work()) == "done"
    assert seen == [before]  # no watcher task beside this one
    assert not conn.event._waiters  # the pending receive() was closed with the guard


async def test_a_message_that_is_not_a_disconnect_is_read_past() -> None:
    conn = FakeConnection()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(30)

    async def chatter_then_leave() -> None:
        await started.wait()
        conn.event.set()  # an empty body message
        await asyncio.sleep(0.01)
        conn.leave()

    other = asyncio.create_task(chatter_then_leave())
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(race_disconnect(conn.receive, work()), 5)
    await other


class _BareYield:
    """An awaitable that yields None to the loop (as ``asyncio.sleep(0)``), not a future."""

    def __await__(self) -> Generator[None, None, None]:
        yield None


async def test_a_receive_that_waits_on_something_else_falls_back_to_a_watcher_task() -> None:
    gone = False

    async def receive() -> Message:
        for _ in range(100_000):  # bounded: the work sets ``gone`` at its first step
            if gone:
                return {"type": "http.disconnect"}
            await _BareYield()
        raise AssertionError("never told the client was gone")

    async def work() -> None:
        nonlocal gone
        gone = True
        await asyncio.sleep(30)

    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(race_disconnect(receive, work()), 5)
