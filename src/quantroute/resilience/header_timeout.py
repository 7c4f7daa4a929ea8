"""A header read timeout for uvicorn's httptools protocol (uvicorn itself has none).

A connection that opens and sends nothing, or sends its request line and headers a byte at a
time, would otherwise hold a socket and a parser forever (slowloris). The timer starts when the
connection opens and again at the first byte of each request, and stops at the last header;
when it fires the gateway answers 408 and closes the connection. Between requests uvicorn's own
keep-alive timeout applies.
"""

from __future__ import annotations

import asyncio
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


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading request headers."""

    header_timeout_s: ClassVar[float] = 10.0
    timeouts: ClassVar[list[int]] = [0]
    """How many connections were cut (shared by the class made by :func:`protocol_class`)."""
    hooks: ClassVar[list[Callable[[], None]]] = []
    """Called on every cut connection (a metric counter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
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


def protocol_class(header_timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with this timeout and its own counter."""
    return type(
        "HeaderTimeoutProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout_s": header_timeout_s, "timeouts": [0], "hooks": []},
    )
