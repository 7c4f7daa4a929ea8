"""Work the gateway takes off a request's path runs once the upstream request is out: with the
gateway's aiohttp client, on uvloop, against a real (fake) backend over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import aiohttp
import pytest
import uvloop

from quantroute.proxy.upstream import after_upstream_send
from quantroute.testing.fake_backend import FakeBackend, ThreadedServer

BODY = b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'


@pytest.fixture
def backend() -> Iterator[ThreadedServer]:
    server = ThreadedServer(FakeBackend().app)
    server.start()
    yield server
    server.stop()


def test_later_work_runs_after_the_upstream_request_is_sent(backend: ThreadedServer) -> None:
    """On Python 3.11 aiohttp sends a request body from a task that first runs at the loop's next
    turn: work put there with a single ``call_soon`` before the call would run ahead of the send
    (the order this test would then see: sent, later, sent)."""
    events: list[str] = []

    async def sent(_: aiohttp.ClientSession, __: SimpleNamespace, ___: object) -> None:
        events.append("sent")

    async def main() -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(sent)
        headers = {"Content-Type": "application/json"}
        url = backend.url + "/v1/chat/completions"
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            async with session.post(url, data=BODY, headers=headers) as first:
                assert first.status == 200
                await first.read()  # its connection goes back to the pool
            later = after_upstream_send(asyncio.get_running_loop())
            later(events.append, "later")
            async with session.post(url, data=BODY, headers=headers) as second:
                assert second.status == 200
                await second.read()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    assert events == ["sent", "sent", "later"]


def test_later_work_runs_two_turns_on_in_order() -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        later = after_upstream_send(loop)
        later(order.append, "a")
        loop.call_soon(order.append, "next turn")
        later(order.append, "b")
        for _ in range(3):
            await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    assert order == ["next turn", "a", "b"]
