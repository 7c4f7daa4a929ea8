"""uvicorn's httptools protocol with the gateway's two connection timers: a header read timeout
(uvicorn itself has none) and a keep-alive timeout that never cuts a request already received.

A connection that opens and sends nothing, or sends its request line and headers a byte at a
time, would otherwise hold a socket and a parser forever (slowloris). The header timer starts
when the connection opens and again at the first byte of each request, and stops at the last
header; when it fires the gateway answers 408 and closes the connection.

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
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import termios
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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

    header_timeout_s: ClassVar[float] = 10.0
    keep_alive_s: ClassVar[float] = 75.0
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
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing() and bytes_waiting(self.transport):
            return  # the next request is here: the read that follows takes it
        super().timeout_keep_alive_handler()


def protocol_class(
    header_timeout_s: float, keep_alive_s: float = 75.0
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
