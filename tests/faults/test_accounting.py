"""Exception-safe accounting: a failure injected at each await point of the upstream exchange.

The gateway's upstream seam (``create_app(upstream=...)``) gets a wrapper around the real aiohttp
client that raises at one chosen point: sending the request, the first chunk of a stream, a
later chunk, reading a whole body. Two kinds of failure: one the gateway knows (a connection
reset, :class:`UpstreamConnectError`) and one it does not (``RuntimeError``: a bug). Whatever
happens, the client gets an answer or a closed stream, never a hang, and afterwards nothing is
left: in-flight gauges and accounts at 0, no backend request still running, no extra task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest

from quantroute.config import parse_config
from quantroute.errors import UpstreamConnectError
from quantroute.proxy.upstream import AiohttpUpstream, Deadlines, UpstreamResponse
from quantroute.server.app import create_app
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

from .conftest import Fleet, backend_row, settled_task_count


class Injected(RuntimeError):
    """An exception the gateway has never heard of."""


class _Response:
    def __init__(self, real: UpstreamResponse, owner: InjectingUpstream) -> None:
        self._real, self._owner = real, owner
        self.status, self.content_type, self.retry_after = (
            real.status,
            real.content_type,
            real.retry_after,
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        index = 0
        async for chunk in self._real.chunks():
            self._owner.maybe_fail(f"chunk:{index}")
            yield chunk
            index += 1

    async def read(self) -> bytes:
        self._owner.maybe_fail("read")
        return await self._real.read()

    def close(self) -> None:
        self._real.close()


class InjectingUpstream:
    def __init__(self, point: str, make: Callable[[], Exception]) -> None:
        self.point, self.make = point, make
        self.real: AiohttpUpstream | None = None
        self.fired = 0

    def maybe_fail(self, point: str) -> None:
        if point == self.point:
            self.fired += 1
            raise self.make()

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> UpstreamResponse:
        if self.real is None:
            self.real = AiohttpUpstream()
        self.maybe_fail("post")
        return _Response(await self.real.post(url, body, headers, deadlines), self)

    async def aclose(self) -> None:
        if self.real is not None:
            await self.real.aclose()


@pytest.fixture
def backend() -> Iterator[tuple[FakeBackend, ThreadedServer]]:
    fake = FakeBackend(FakeState(served_model_name="m", chunk_delay_s=0.01))
    server = ThreadedServer(fake.app).start()
    yield fake, server
    server.stop()


MAKERS: dict[str, Callable[[], Exception]] = {
    "reset": lambda: UpstreamConnectError("injected reset"),
    "bug": lambda: Injected("injected bug"),
}
CASES = [
    ("post", False),
    ("post", True),
    ("read", False),
    ("chunk:0", True),  # the stream's first chunk, read before the response is committed
    ("chunk:3", True),  # mid-stream
]


@pytest.mark.parametrize("failure", sorted(MAKERS))
@pytest.mark.parametrize(("point", "stream"), CASES)
def test_failure_at_each_await_point_leaves_nothing_behind(
    backend: tuple[FakeBackend, ThreadedServer], point: str, stream: bool, failure: str
) -> None:
    fake, server = backend
    config = parse_config(
        {
            "backends": [backend_row("a", server.url, "m")],
            "groups": [{"name": "auto", "variants": ["v"]}],
            "policy": {"scrape_interval_s": 0.1, "retries": 0},
        }
    )
    upstream = InjectingUpstream(point, MAKERS[failure])
    gateway = GatewayThread(config, app=create_app(config, upstream=upstream)).start()
    fleet = Fleet(gateway, config, {"a": fake}, {"a": server})
    try:
        assert wait_until(lambda: fleet.admin()["a"]["state"] == "fresh")
        fleet.baseline_tasks = settled_task_count(gateway)
        body = {"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
        status, content = _post(fleet.url, {**body, "stream": stream})
        assert upstream.fired == 1
        if point == "chunk:3":
            # Committed to a 200 stream: it ends early (an error event for a known failure,
            # a cut connection for a bug); never the full answer.
            assert status == 200 and b"data: [DONE]" not in content
            if failure == "reset":
                assert b'"error"' in content.split(b"\n\n")[-2]
        else:
            assert status in (500, 502), content
            error = httpx.Response(status, content=content).json()["error"]
            assert set(error) >= {"message", "type", "param", "code"}
        assert wait_until(lambda: fake.state.active == 0, 10)
        fleet.assert_no_leaks()
    finally:
        gateway.submit(upstream.aclose())  # injected, so the app leaves closing it to us
        gateway.stop()


def _post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    content = b""
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            status = r.status_code
            for chunk in r.iter_bytes():
                content += chunk
    except httpx.RemoteProtocolError:  # a stream cut mid-body
        return 200, content
    return status, content
