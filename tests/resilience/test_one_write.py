"""A whole answer goes to the socket in one write: its head held for its body (the gateway's
uvicorn protocol and :class:`~quantroute.proxy.relay.WholeResponse`), through real uvicorn on
loopback with the connection's writes recorded, and the holding itself in narrow unit tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from quantroute.one_write import ONE_WRITE
from quantroute.proxy.relay import WholeResponse
from quantroute.resilience.header_timeout import (
    HeaderTimeoutProtocol,
    _LingerOnClose,
    protocol_class,
)
from quantroute.testing.fake_backend import wait_until

Writes = list[tuple[str, bytes]]


class Recorder:
    """A transport that records every write (``write`` one piece, ``writelines`` all joined)
    and hands everything on to the real one."""

    def __init__(self, transport: Any, writes: Writes) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(("write", bytes(data)))
        self._transport.write(data)

    def writelines(self, pieces: Iterable[bytes]) -> None:
        pieces = list(pieces)
        self._writes.append(("writelines", b"".join(pieces)))
        self._transport.writelines(pieces)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class App:
    """``/whole``: a :class:`WholeResponse`; ``/plain``: Starlette's ``Response``; both say
    whether the server offered the one-write extension."""

    def __init__(self) -> None:
        self.settled = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        offered = b"yes" if ONE_WRITE in scope.get("extensions", {}) else b"no"
        body = b'{"offered": "' + offered + b'"}'
        response: Response
        if scope["path"] == "/whole":
            response = WholeResponse(
                body, 200, headers={"x-kind": "whole"}, media_type="application/json",
                after=self._settle,
            )  # fmt: skip
        else:
            response = Response(body, 200, media_type="application/json")
        await response(scope, receive, send)

    def _settle(self) -> None:
        self.settled += 1


class Server:
    def __init__(self) -> None:
        self.app = App()
        self.writes: Writes = []
        writes = self.writes

        class Recording(protocol_class(10.0, 5.0)):  # type: ignore[misc]
            def connection_made(self, transport: asyncio.Transport) -> None:
                super().connection_made(Recorder(transport, writes))

        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, http=Recording, log_level="warning", lifespan="off",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(self.server.serve(sockets=[self._listener]))
        loop.close()

    def __enter__(self) -> Server:
        self.thread.start()
        assert wait_until(lambda: self.server.started, 10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self._listener.close()


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as served:
        yield served


def test_a_whole_answer_leaves_in_one_write_and_the_next_answers_are_unharmed(
    server: Server,
) -> None:
    with httpx.Client(base_url=server.url) as client:  # one keep-alive connection
        answers = [client.get(path) for path in ("/whole", "/plain", "/whole", "/whole")]
    assert [a.json() for a in answers] == [{"offered": "yes"}] * 4
    assert [a.headers.get("x-kind") for a in answers] == ["whole", None, "whole", "whole"]
    assert server.app.settled == 3
    kinds = [kind for kind, _ in server.writes]
    # each whole answer: one writelines with its head and body; the plain one: two writes
    assert kinds == ["writelines", "write", "write", "writelines", "writelines"]
    first = server.writes[0][1]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(
        b'\r\n\r\n{"offered": "yes"}'
    )


class FakeTransport:
    def __init__(self) -> None:
        self.writes: Writes = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(("write", data))

    def writelines(self, pieces: Iterable[bytes]) -> None:
        self.writes.append(("writelines", b"|".join(pieces)))

    def is_closing(self) -> bool:
        return self.closing


def _wrapper() -> tuple[_LingerOnClose, FakeTransport]:
    transport = FakeTransport()
    protocol = HeaderTimeoutProtocol.__new__(HeaderTimeoutProtocol)
    protocol.transport = transport  # type: ignore[assignment]
    return _LingerOnClose(protocol), transport


def test_held_head_goes_with_the_body_and_writes_after_it_are_plain() -> None:
    wrapper, transport = _wrapper()
    wrapper.hold()
    wrapper.write(b"head")
    assert transport.writes == []
    wrapper.write(b"body")
    wrapper.write(b"later")
    wrapper.release()  # nothing held: nothing written
    assert transport.writes == [("writelines", b"head|body"), ("write", b"later")]


def test_a_head_with_no_body_after_it_is_written_on_release_unless_closing() -> None:
    wrapper, transport = _wrapper()
    wrapper.hold()
    wrapper.write(b"head")
    wrapper.release()
    wrapper.write(b"next")
    assert transport.writes == [("write", b"head"), ("write", b"next")]
    wrapper.hold()
    wrapper.write(b"head2")
    transport.closing = True
    wrapper.release()
    wrapper.write(b"after")  # not held any more
    assert transport.writes[2:] == [("write", b"after")]
