"""Client-side limits through real uvicorn on loopback: raw sockets play the misbehaving clients."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from quantroute.resilience.client_limits import ClientLimitsMiddleware, Rejection
from quantroute.resilience.header_timeout import (
    LINGER_BYTES,
    LINGER_S,
    HeaderTimeoutProtocol,
    bytes_waiting,
    protocol_class,
)
from quantroute.resilience.json_limits import TooDeep, depth_exceeds, loads_bounded
from quantroute.resilience.settings import ClientLimits
from quantroute.testing.fake_backend import wait_until


class EchoApp:
    """Counts calls; ``/echo`` returns the body length; ``/hold`` waits until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.holding = 0

    async def echo(self, request: Request) -> JSONResponse:
        self.calls += 1
        return JSONResponse({"length": len(await request.body())})

    async def hold(self, request: Request) -> JSONResponse:
        self.calls += 1
        self.holding += 1
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
        return JSONResponse({"ok": True})

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})


class Served:
    def __init__(self, limits: ClientLimits) -> None:
        self.echo = EchoApp()
        self.rejections: list[Rejection] = []
        routes = [
            Route("/echo", self.echo.echo, methods=["POST"]),
            Route("/hold", self.echo.hold, methods=["GET", "POST"]),
            Route("/health", self.echo.health, methods=["GET"]),
        ]
        app = ClientLimitsMiddleware(
            Starlette(routes=routes), lambda: limits, on_reject=self.rejections.append
        )
        self.protocol = protocol_class(limits.header_timeout_s, limits.keep_alive_s)
        # bound here and handed to uvicorn: no window in which another process takes the port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            http=self.protocol,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sockets: list[socket.socket] = []
        """The test's client connections, closed when it stops (those it did not close)."""

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.server.serve(sockets=[self._listener]))
        self.loop.close()

    def start(self) -> Served:
        self.thread.start()
        assert wait_until(lambda: self.server.started, 10)
        return self

    def stop(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.echo.release.set)
        self.server.should_exit = True
        self.thread.join(10)
        self._listener.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sockets.append(sock)
        return sock


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Served] = []

    def factory(**limits: Any) -> Served:
        served = Served(ClientLimits(**limits)).start()
        started.append(served)
        return served

    yield factory
    for served in started:
        served.stop()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response up to EOF (the limits answer with ``connection: close``)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def trickle(sock: socket.socket, data: bytes, interval_s: float, max_s: float = 10.0) -> int:
    """Send ``data`` a byte at a time, ``interval_s`` apart, until the server answers; bytes sent."""
    deadline = time.monotonic() + max_s
    for sent, byte in enumerate(data):
        if select.select([sock], [], [], interval_s)[0] or time.monotonic() > deadline:
            return sent
        sock.sendall(bytes([byte]))
    select.select([sock], [], [], max_s)
    return len(data)


def openai_error(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_declared_length_over_the_limit_is_413_before_reading(serve: Any) -> None:
    served = serve(max_body_bytes=2048)
    sock = served.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n\r\n")
    status, headers, body = read_response(sock)  # answered without sending a byte of body
    assert status == 413 and headers["connection"] == "close"
    assert openai_error(body)["code"] == "request_too_large"
    assert served.echo.calls == 0 and served.rejections == [Rejection.BODY_TOO_LARGE]


def send_all_or_reset(sock: socket.socket, data: bytes) -> bool:
    """Send ``data`` unless the server resets the connection; whether it all went."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


@pytest.mark.parametrize("ends_its_side", [True, False])
def test_refused_upload_still_reads_its_answer_to_a_clean_end(
    serve: Any, ends_its_side: bool
) -> None:
    """413 before the body is read: the body the client keeps sending is read and dropped, so
    the answer arrives followed by an end of stream, not a reset (which loses it)."""
    served = serve(max_body_bytes=2048)
    sock = served.connect()
    head = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n\r\n"
    assert send_all_or_reset(sock, head + b"b" * 512 * 1024)  # more than the server buffers
    assert wait_until(lambda: served.rejections == [Rejection.BODY_TOO_LARGE], 5)
    # the answer has arrived, so the server has closed (or is lingering) by now
    assert select.select([sock], [], [], 10)[0]
    assert send_all_or_reset(sock, b"b" * 64 * 1024)  # a client still writing is not reset
    if ends_its_side:
        sock.shutdown(socket.SHUT_WR)
    status, headers, body = read_response(sock)  # ECONNRESET here without the lingering close
    assert status == 413 and headers["connection"] == "close"
    assert openai_error(body)["code"] == "request_too_large"


def test_lingering_close_is_bounded_in_bytes(serve: Any) -> None:
    served = serve(max_body_bytes=2048)
    sock = served.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 500000000\r\n\r\n")
    assert wait_until(lambda: served.rejections == [Rejection.BODY_TOO_LARGE], 5)
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(10_000):  # 640 MB if the server read forever
            sock.sendall(b"c" * 65536)
            sent += 65536
    assert sent < LINGER_BYTES + 16 * 1024 * 1024  # the drop limit, plus the kernel's buffers


def test_lingering_close_is_bounded_in_time(serve: Any) -> None:
    served = serve(max_body_bytes=2048)
    sock = served.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n\r\n")
    assert read_one(sock) == 413
    assert sock.recv(1) == b""  # the server ended its side after the answer
    assert send_all_or_reset(sock, b"c")  # and still reads, for a while
    # the client neither ends its side nor stops: once LINGER_S is over the server closes, and
    # a byte sent then is answered with a reset
    assert wait_until(lambda: not send_all_or_reset(sock, b"c"), LINGER_S + 10)


def test_never_ending_chunked_upload_is_cut_at_the_limit(serve: Any) -> None:
    served = serve(max_body_bytes=64 * 1024)
    sock = served.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
    piece = b"x" * 4096
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(100_000):  # 400 MB if nobody stops it
            sock.sendall(frame)
            sent += len(piece)
    assert sent < 16 * 1024 * 1024  # the server closed the connection soon after the limit
    assert served.echo.calls == 0 and served.rejections == [Rejection.BODY_TOO_LARGE]


def test_body_within_limits_reaches_the_app_whole(serve: Any) -> None:
    served = serve(max_body_bytes=1024 * 1024)
    body = b"y" * 300_000
    r = httpx.post(served.url + "/echo", content=iter([body[:100_000], body[100_000:]]))
    assert r.status_code == 200 and r.json() == {"length": 300_000}


@pytest.mark.parametrize(
    ("limits", "interval_s"),
    [
        ({"body_idle_s": 0.3, "body_timeout_s": 30}, 1.0),  # a gap too long
        ({"body_idle_s": 1.0, "body_timeout_s": 0.6}, 0.1),  # steady but never done in time
    ],
)
def test_slow_body_is_408(serve: Any, limits: dict[str, float], interval_s: float) -> None:
    served = serve(**limits)
    sock = served.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n")
    assert trickle(sock, b"z" * 100, interval_s) < 100
    status, headers, body = read_response(sock)
    assert status == 408 and openai_error(body)["code"] == "request_timeout"
    assert headers["connection"] == "close"
    assert served.rejections == [Rejection.BODY_TIMEOUT] and served.echo.calls == 0


def test_client_gone_during_upload_is_quiet(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    served = serve()
    caplog.set_level(logging.INFO)
    sock = served.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n" + b"a" * 10)
    time.sleep(0.1)
    sock.close()
    assert wait_until(lambda: served.rejections == [Rejection.CLIENT_GONE], 5)
    assert served.echo.calls == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_concurrency_limit_answers_503_with_retry_after(serve: Any) -> None:
    served = serve(max_concurrent_requests=2, retry_after_s=3)
    holders = [served.connect() for _ in range(2)]
    for sock in holders:
        sock.sendall(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
    assert wait_until(lambda: served.echo.holding == 2, 5)
    r = httpx.post(served.url + "/echo", content=b"{}")
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert openai_error(r.content)["code"] == "gateway_overloaded"
    assert httpx.get(served.url + "/health").status_code == 200  # probes are not counted
    assert served.loop is not None
    served.loop.call_soon_threadsafe(served.echo.release.set)
    assert wait_until(lambda: served.echo.holding == 0, 5)
    assert httpx.post(served.url + "/echo", content=b"{}").status_code == 200
    for sock in holders:
        sock.close()


def test_idle_connection_without_a_request_is_cut(serve: Any) -> None:
    served = serve(header_timeout_s=0.3)
    sock = served.connect()
    status, headers, body = read_response(sock)  # sent nothing at all
    assert status == 408 and headers["connection"] == "close"
    assert openai_error(body)["code"] == "request_timeout"
    assert served.protocol.timeouts == [1]


def test_headers_one_byte_at_a_time_are_cut(serve: Any) -> None:
    served = serve(header_timeout_s=0.5)
    sock = served.connect()
    request = b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 200 + b"\r\n\r\n"
    assert trickle(sock, request, 0.05) < len(request)  # cut before the headers were done
    status, _, body = read_response(sock)
    assert status == 408 and openai_error(body)["code"] == "request_timeout"
    assert served.protocol.timeouts == [1]


def test_header_timer_restarts_for_each_request_on_a_kept_alive_connection(serve: Any) -> None:
    served = serve(header_timeout_s=0.4)
    with httpx.Client(base_url=served.url) as client:
        for _ in range(4):  # 4 x 0.2 s: longer than the timeout in total, each request in time
            assert client.get("/health").status_code == 200
            time.sleep(0.2)
    assert served.protocol.timeouts == [0]


HEALTH = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"


def read_one(sock: socket.socket) -> int:
    """The status of one keep-alive response (its body is small: read up to its length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return int(lines[0].split()[1])


def hold_loop_then(served: Served, sent: threading.Event, act: Any) -> list[bool]:
    """On the server's loop: wait (holding the loop, so nothing is read) until the test has
    sent its bytes and they wait on the connection's socket, then ``act(protocol)``; returns
    [is_closing after it], filled once it ran."""
    done: list[bool] = []

    def held() -> None:
        assert sent.wait(10)
        (proto,) = served.server.server_state.connections
        assert isinstance(proto, HeaderTimeoutProtocol)
        assert wait_until(lambda: bytes_waiting(proto.transport) > 0, 5)  # sent, unread
        act(proto)
        done.append(proto.transport.is_closing())

    assert wait_until(lambda: len(served.server.server_state.connections) == 1, 5)  # accepted
    assert served.loop is not None
    served.loop.call_soon_threadsafe(held)
    return done


def test_keep_alive_s_is_the_idle_time_allowed_between_requests(serve: Any) -> None:
    served = serve(keep_alive_s=0.3)
    sock = served.connect()
    sock.sendall(HEALTH)
    assert read_one(sock) == 200
    (proto,) = served.server.server_state.connections
    assert proto.timeout_keep_alive == 0.3
    assert sock.recv(1) == b""  # closed by the gateway once idle (the socket's timeout: 10 s)
    assert served.protocol.timeouts == [0]  # not a header timeout
    assert serve().protocol.keep_alive_s == 75.0  # the default: longer than clients keep idle


def test_a_request_waiting_when_the_keep_alive_timer_fires_is_served(serve: Any) -> None:
    """The loop runs due timers before it reads its sockets: a keep-alive timer that fires
    while the next request waits unread leaves the connection to the read (a close would reset
    the connection under a request sent in time)."""
    served = serve()
    sock = served.connect()
    sock.sendall(HEALTH)
    assert read_one(sock) == 200
    sent = threading.Event()
    closing = hold_loop_then(served, sent, lambda proto: proto.timeout_keep_alive_handler())
    sock.sendall(HEALTH)
    sent.set()
    assert read_one(sock) == 200
    assert closing == [False]


def test_headers_waiting_when_the_header_timer_fires_get_a_grace(serve: Any) -> None:
    served = serve()
    sock = served.connect()
    sent = threading.Event()
    closing = hold_loop_then(served, sent, lambda proto: proto._headers_late())
    sock.sendall(HEALTH)  # the whole request, arrived as the timer fires
    sent.set()
    assert read_one(sock) == 200
    assert closing == [False] and served.protocol.timeouts == [0]


@pytest.mark.parametrize(
    ("text", "limit", "deep"),
    [
        ("{}", 1, False),
        ("[[]]", 1, True),
        ('{"a": [{"b": 1}]}', 3, False),
        ('{"a": [{"b": [1]}]}', 3, True),
        ('"[[[[[[["', 1, False),  # brackets in strings are text
    ],
)
def test_depth_table(text: str, limit: int, deep: bool) -> None:
    assert depth_exceeds(json.loads(text), limit) is deep


def test_bounded_loads_turns_recursion_into_too_deep() -> None:
    with pytest.raises(TooDeep):
        loads_bounded("[" * 100_000 + "]" * 100_000, 64)
    with pytest.raises(TooDeep):
        loads_bounded("[" * 65 + "]" * 65, 64)
    assert loads_bounded("[" * 64 + "]" * 64, 64) is not None
    with pytest.raises(ValueError, match="Expecting"):
        loads_bounded("{", 64)


def test_bodies_read_at_once_share_one_buffer_cap(serve: Any) -> None:
    served = serve(max_body_bytes=64 * 1024, max_buffered_body_bytes=100 * 1024, retry_after_s=2)
    first = served.connect()
    first.sendall(
        b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 60000\r\n\r\n"
        + b"a" * 59000
    )
    time.sleep(0.2)  # 59 KB held by the first upload, still going
    second = served.connect()
    second.sendall(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 60000\r\n\r\n" + b"b" * 60000
    )
    status, headers, body = read_response(second)
    assert status == 503 and headers["retry-after"] == "2"
    assert openai_error(body)["code"] == "gateway_overloaded"
    first.sendall(b"a" * 1000)  # the first one completes within its own limit
    status, _, body = read_response(first)
    assert status == 200 and json.loads(body) == {"length": 60000}
    assert served.rejections == [Rejection.BODY_BUFFERS_FULL]


def test_headers_trickled_after_a_kept_alive_request_are_cut(serve: Any) -> None:
    """A later request on a connection gets its header timer too: armed when the read that
    brought its first byte did not bring all its headers (one that did never arms it)."""
    served = serve(header_timeout_s=0.5)
    sock = served.connect()
    sock.sendall(HEALTH)
    assert read_one(sock) == 200
    request = b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 200 + b"\r\n\r\n"
    assert trickle(sock, request, 0.05) < len(request)  # cut before the headers were done
    status, _, body = read_response(sock)
    assert status == 408 and openai_error(body)["code"] == "request_timeout"
    assert served.protocol.timeouts == [1]
