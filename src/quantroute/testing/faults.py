"""Small misbehaving servers on loopback, for fault-injection tests and the soak benchmark.

:class:`RawServer` is a bare asyncio TCP server in a background thread: it reads one HTTP
request (head and Content-Length body) per connection and hands the connection to a behaviour,
a coroutine that writes whatever bytes it likes: valid answers, answers no HTTP client can
accept, nothing at all, or a reset half-way. It serves vLLM-format ``/metrics`` (from
:func:`~quantroute.testing.fake_backend.metrics_text`) unless the behaviour handles that too, so a
backend can look perfectly healthy to the scraper while its API misbehaves. Every connection
answered is closed after its answer (no keep-alive), so an upstream socket still open after a
scenario is a leak. The server counts connections opened, open now, and requests by path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from quantroute.testing.fake_backend import FakeState, metrics_text


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body or b"{}")
        assert isinstance(value, dict)
        return value


Behaviour = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 500: b"Internal Server Error"}.get(status, b"X")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason, content_type, len(body))
        + body
    )


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed process or a dropped route looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def sse_event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chat_chunk(model: str, content: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": finish}
    return sse_event(
        {
            "id": "cmpl-fault",
            "object": "chat.completion.chunk",
            "created": 1795474388,
            "model": model,
            "choices": [choice],
        }
    )


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)
"""Streams are chunked, as vLLM (uvicorn) sends them: a connection that breaks mid-body is then
visibly incomplete to the client, not a normal end."""


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


# -- behaviours ----------------------------------------------------------------------------------
def answer(status: int, body: bytes) -> Behaviour:
    async def behaviour(_: Request, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(response(status, body))
        await w.drain()

    return behaviour


def server_error(message: str = "injected failure") -> Behaviour:
    """HTTP 500 with vLLM's error body, at once (so the backend looks idle)."""
    error = {"message": message, "type": "InternalServerError", "param": None, "code": 500}
    return answer(500, json.dumps({"error": error}).encode())


async def never_answer(_: Request, reader: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
    """Accept the request and say nothing, until the client gives up."""
    while await reader.read(65536):
        pass


def stream_then_reset(chunks: int, delay_s: float = 0.0) -> Behaviour:
    """A stream that sends ``chunks`` content chunks and then resets the connection."""

    async def behaviour(req: Request, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        model = str(req.json().get("model", "m"))
        w.write(SSE_HEAD)
        for _i in range(chunks):
            w.write(chunk(chat_chunk(model, " tok")))
            await w.drain()
            if delay_s:
                await asyncio.sleep(delay_s)
        reset(w)

    return behaviour


class Firehose:
    """A stream of valid chunks sent as fast as the connection takes them; counts bytes sent."""

    def __init__(self, limit: int = 1024 * 1024 * 1024) -> None:
        self.sent = 0
        self.limit = limit

    async def __call__(
        self, req: Request, _: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        model = str(req.json().get("model", "m"))
        w.write(SSE_HEAD)
        batch = chunk(chat_chunk(model, " tok" * 16) * 64)
        while self.sent < self.limit:
            w.write(batch)
            await w.drain()  # honours TCP backpressure from the gateway
            self.sent += len(batch)


def raw_bytes(data: bytes) -> Behaviour:
    """Write exactly ``data`` (a malformed head, a bad header...) and close."""

    async def behaviour(_: Request, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(data)
        await w.drain()

    return behaviour


def endless_event(piece: int = 65536, limit: int = 64 * 1024 * 1024) -> Behaviour:
    """A stream whose first SSE event never ends: ``data: xxxx...`` with no separator."""

    async def behaviour(_: Request, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + chunk(b"data: "))
        sent = 0
        while sent < limit:
            w.write(chunk(b"x" * piece))
            await w.drain()
            sent += piece

    return behaviour


def huge_body(size: int) -> Behaviour:
    """A non-streaming 200 answer of ``size`` bytes, sent as it is generated."""

    async def behaviour(_: Request, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        w.write(b"content-length: %d\r\nconnection: close\r\n\r\n" % size)
        piece = b" " * 65536
        sent = 0
        while sent < size:
            w.write(piece[: size - sent])
            await w.drain()
            sent += len(piece)

    return behaviour


# -- the server ----------------------------------------------------------------------------------
@dataclass
class Stats:
    accepted: int = 0
    open: int = 0
    requests: Counter[str] = field(default_factory=Counter)


class RawServer:
    """A misbehaving HTTP server on 127.0.0.1 in its own thread; swap ``behaviour`` at any time."""

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        metrics: FakeState | None = None,
        metrics_body: bytes | None = None,
        port: int | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.metrics_state = metrics or FakeState()
        self.metrics_body = metrics_body
        """Raw /metrics body (garbage, a wrong exporter...); None: healthy vLLM metrics."""
        # Bound here, handed to the server: no window in which another process takes the port.
        self._socket = socket.create_server(("127.0.0.1", port or 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stats = Stats()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, sock=self._socket)
        )
        self._ready.set()
        self._loop.run_forever()
        for writer in list(self._writers):
            writer.transport.abort()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        self.stats.open += 1
        self._writers.add(writer)
        try:
            request = await _read_request(reader)
            if request is None:
                return
            self.stats.requests[request.path] += 1
            if request.path == "/metrics":
                await self._metrics(writer)
            else:
                await self.behaviour(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.stats.open -= 1
            self._writers.discard(writer)
            writer.transport.abort() if writer.transport.is_closing() else writer.close()

    async def _metrics(self, writer: asyncio.StreamWriter) -> None:
        body = self.metrics_body
        if body is None:
            body = metrics_text(self.metrics_state).encode()
        writer.write(response(200, body, b"text/plain; version=0.0.4"))
        await writer.drain()

    def start(self) -> RawServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._socket.close()  # the server's, closed already once it ran

    def __enter__(self) -> RawServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ": " in line:
                name, value = line.split(": ", 1)
                headers[name.lower()] = value
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return Request(method, path, headers, body)
    return None
