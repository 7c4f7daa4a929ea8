"""uvicorn's httptools protocol with the gateway's two connection timers: a header read timeout
(uvicorn itself has none) and a keep-alive timeout that never cuts a request already received.

A connection that opens and sends nothing, or sends its request line and headers a byte at a
time, would otherwise hold a socket and a parser forever (slowloris). The header timer starts
when the connection opens and again at the first byte of each request, and stops at the last
header; when it fires the gateway answers 408 and closes the connection. A request whose
headers all came in the read that brought its first byte (nearly every one) never needs it, so
the timer is armed at the end of that read only if they did not: no timer is set and cancelled
per request.

Between requests the keep-alive timer applies (``keep_alive_s``, uvicorn's
``timeout_keep_alive``). The event loop (uvloop, as libuv) runs its due timers before it reads
its sockets, so after a busy stretch a keep-alive timer could close a connection whose next
request had arrived in time and was only waiting to be read: the close, with unread bytes,
resets the connection, and the client sees a connection error for a request it sent well within
the timeout (measured: a gateway held for 5 s after its clients' responses lost all eight
requests they sent at 0.5 s). Both timers therefore look at the socket before they cut: with
bytes waiting, the keep-alive timer leaves the connection to the read that follows (a partial
request then runs under the header timer), and the header timer grants those bytes one short
grace (:data:`GRACE_S`) before its 408, so a slowloris client still goes.

A connection closed right after an answer that refused a request (413, 408: the answer says
``connection: close``) usually has request bytes still coming. Closing a socket with unread
bytes makes the kernel send a reset instead of an end of stream, and a client that is still
writing, or that reads after the reset arrived, loses the answer and reports a connection error
instead of the 413 or 408 (a CI run saw exactly that). So the gateway closes such connections
as nginx does ("lingering close"): it ends its side after the answer and reads and drops what
the client still sends, until the client ends its side, for at most :data:`LINGER_S` and
:data:`LINGER_BYTES`, then closes. A request that was read whole closes at once.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import termios
from collections.abc import Callable
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from quantroute.one_write import ONE_WRITE
from quantroute.resilience.settings import ClientLimits

_DEFAULTS = ClientLimits()

_BODY = (
    b'{"error":{"message":"Request headers were not received in time.",'
    b'"type":"invalid_request_error","param":null,"code":"request_timeout"}}'
)
RESPONSE_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)
GRACE_S = 0.5
"""What the header timer adds, once per request, when bytes are waiting as it fires."""
LINGER_S = 2.0
"""How long a refused request's connection stays open, reading and dropping, after the answer."""
LINGER_BYTES = 1024 * 1024
"""How much a lingering connection reads and drops before it closes anyway."""


def bytes_waiting(transport: asyncio.BaseTransport) -> int:
    """Bytes received on the transport's socket and not yet read (0 when it cannot tell)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except (OSError, ValueError):  # closed meanwhile, or not a socket
        return 0
    return count[0]


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading request headers."""

    header_timeout_s: ClassVar[float] = _DEFAULTS.header_timeout_s
    keep_alive_s: ClassVar[float] = _DEFAULTS.keep_alive_s
    """Idle time between two requests on a connection before it is closed."""
    timeouts: ClassVar[list[int]] = [0]
    """How many connections were cut (shared by the class made by :func:`protocol_class`)."""
    hooks: ClassVar[list[Callable[[], None]]] = []
    """Called on every cut connection (a metric counter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.keep_alive_s  # type: ignore[assignment]  # float: call_later
        self._header_timer: asyncio.TimerHandle | None = None
        self._graced = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_left = -1
        """Bytes a lingering close still drops; -1 when the connection is not lingering."""
        self._cycle_transport: _LingerOnClose | None = None
        """What each request cycle of this connection sees as its transport (set on connect)."""
        self._in_headers = False
        """A request's first byte was read and its headers are not all in yet."""

    def _arm(self) -> None:
        self._disarm()
        self._graced = False
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._graced and bytes_waiting(self.transport):  # arrived, not read yet
            self._graced = True
            self._header_timer = self.loop.call_later(GRACE_S, self._headers_late)
            return
        self.timeouts[0] += 1
        for hook in self.hooks:
            hook()
        self.transport.write(RESPONSE_408)
        self.close_lingering()

    def close_lingering(self) -> None:
        """End the gateway's side after what was written, drop what still comes, then close."""
        transport = self.transport
        if transport.is_closing() or self._linger_left >= 0:
            return
        if not transport.can_write_eof():  # pragma: no cover  # TLS: a plain close
            transport.close()
            return
        self._disarm()
        self._unset_keepalive_if_required()
        self._linger_left = LINGER_BYTES
        transport.write_eof()
        transport.resume_reading()  # the body may have paused reading: drain it now
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._linger_left < 0:
            super().data_received(data)
            if self._in_headers and self._header_timer is None:
                self._arm()  # headers still to come: timed from this read, the first byte's
            return
        self._linger_left -= len(data)
        if self._linger_left < 0:
            self.transport.close()
            self._linger_left = 0

    def eof_received(self) -> None:
        if self._linger_left >= 0:
            self.transport.close()  # the client has ended its side too

    def on_response_complete(self) -> None:
        if self._linger_left >= 0:
            self.server_state.total_requests += 1
            return  # no keep-alive timer and no pipelined request on a closing connection
        super().on_response_complete()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._cycle_transport = _LingerOnClose(self)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._disarm()  # the connection's timer: from here the request's own (data_received)
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()
        # Every cycle: whether its body was read whole is known only when its answer closes.
        # One wrapper per connection: it reads the cycle of the moment from the protocol.
        self.cycle.transport = self._cycle_transport  # type: ignore[assignment]
        cast("dict[str, object]", self.scope)["extensions"] = {ONE_WRITE: self._cycle_transport}

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing() and bytes_waiting(self.transport):
            return  # the next request is here: the read that follows takes it
        super().timeout_keep_alive_handler()


Buffer = bytes | bytearray | memoryview


class _LingerOnClose:
    """The transport as a request cycle with a body sees it: ``close`` (uvicorn's, after an
    answer with ``connection: close``) closes lingering when the body was not read whole.

    It is also the connection's :class:`~quantroute.one_write.OneWrite`: uvicorn writes an answer's head as it starts
    and its body as it comes, two system calls and two TCP segments for an answer that is whole
    before it starts; held (:meth:`hold`), the head goes out with the body in one ``writelines``
    (one ``writev``), as nginx sends a small answer."""

    __slots__ = ("_held", "_protocol", "_transport", "is_closing", "write")

    def __init__(self, protocol: HeaderTimeoutProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self.write = self._transport.write
        self.is_closing = self._transport.is_closing
        self._held: Buffer | None = None

    def hold(self) -> None:
        self.write = self._hold_write

    def _hold_write(self, data: Buffer) -> None:
        held = self._held
        if held is None:
            self._held = data
            return
        self._held = None
        self.write = self._transport.write
        self._transport.writelines((held, data))

    def release(self) -> None:
        self.write = write = self._transport.write
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            write(held)

    def close(self) -> None:
        cycle: RequestResponseCycle | None = self._protocol.cycle
        if (cycle is not None and cycle.more_body) or bytes_waiting(self._transport):
            self._protocol.close_lingering()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_class(
    header_timeout_s: float, keep_alive_s: float = _DEFAULTS.keep_alive_s
) -> type[HeaderTimeoutProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these timeouts and its own
    counter."""
    return type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "keep_alive_s": keep_alive_s,
            "timeouts": [0],
            "hooks": [],
        },
    )
