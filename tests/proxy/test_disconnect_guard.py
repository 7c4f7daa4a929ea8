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


class LongWork:
    """Work that waits long, and says whether it started and whether it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self) -> str:
        self.started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "done"


async def test_a_client_that_leaves_cancels_the_work() -> None:
    conn = FakeConnection()
    work = LongWork()

    async def leave_when_started() -> None:
        await work.started.wait()
        conn.leave()

    leaver = asyncio.create_task(leave_when_started())
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(race_disconnect(conn.receive, work.run()), 5)
    await leaver
    assert work.cancelled


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


class CountingConnection(FakeConnection):
    """A :class:`FakeConnection` that counts its ``receive()`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def receive(self) -> Message:
        self.calls += 1
        return await super().receive()


async def test_a_deferred_watch_starts_two_loop_turns_after_the_work() -> None:
    """Deferred (an upstream exchange): ``receive()`` is not touched on the request's way to
    its backend, only once the upstream request is out (the loop's turn after next)."""
    conn = CountingConnection()
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []

    async def work() -> str:
        seen.append(("entered", conn.calls))
        loop.call_soon(lambda: seen.append(("next turn", conn.calls)))
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(("later", conn.calls))
        return "done"

    assert await race_disconnect(conn.receive, work(), deferred=True) == "done"
    assert seen == [("entered", 0), ("next turn", 0), ("later", 1)]
    assert not conn.event._waiters  # the watch it started was closed with the guard


async def test_a_deferred_watch_never_starts_for_work_that_ends_first() -> None:
    conn = CountingConnection()

    async def work() -> str:
        return "done"

    assert await race_disconnect(conn.receive, work(), deferred=True) == "done"
    for _ in range(3):  # past the turn the watch would have started at
        await asyncio.sleep(0)
    assert conn.calls == 0
    assert not conn.event._waiters


async def test_a_deferred_watch_cancels_the_work_of_a_client_that_leaves() -> None:
    conn = CountingConnection()
    work = LongWork()

    async def leave_when_watched() -> None:
        await work.started.wait()
        for _ in range(100):  # bounded: the watch starts two turns after the work
            if conn.calls:
                break
            await asyncio.sleep(0)
        conn.leave()

    leaver = asyncio.create_task(leave_when_watched())
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(race_disconnect(conn.receive, work.run(), deferred=True), 5)
    await leaver
    assert work.cancelled and conn.calls >= 1


async def test_a_deferred_watch_notices_a_client_gone_before_it_started() -> None:
    conn = CountingConnection()
    conn.leave()
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(race_disconnect(conn.receive, asyncio.sleep(30), deferred=True), 5)
    assert conn.calls == 1
