"""ASGI middleware bounding what one client request may cost: concurrency, body size and time.

- More than ``max_concurrent_requests`` requests in progress: 503 with ``Retry-After``.
- The body is read here, before the application sees it, counting bytes as they arrive (chunked
  bodies included): over ``max_body_bytes`` is 413 at once (a declared Content-Length over the
  limit is refused before reading); a gap over ``body_idle_s`` or a body that takes longer than
  ``body_timeout_s`` is 408. Both close the connection, so a never-ending upload stops. All
  bodies being read together stay under ``max_buffered_body_bytes`` (else 503, Retry-After).
- A client that disconnects during its upload ends the request quietly (nothing to answer).

The application then receives the body in one message and, after it, the real ``receive`` (so it
still notices a disconnect). Errors are in OpenAI's format (Anthropic's on ``/v1/messages``) with
the request id the access middleware, which runs first, gave the request (it also adds the
``x-request-id`` header). This is the gateway's one body-size limit. Probe and metrics paths are
exempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Generator, Iterable
from enum import StrEnum
from typing import Any, cast

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quantroute.access.middleware import ANTHROPIC_PATHS
from quantroute.apis import anthropic_errors
from quantroute.resilience.settings import ClientLimits

log = logging.getLogger("quantroute.limits")
EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Rejection(StrEnum):
    """Why the middleware answered instead of the application (the ``reason`` metric label)."""

    OVERLOADED = "overloaded"
    BODY_BUFFERS_FULL = "body_buffers_full"
    BODY_TOO_LARGE = "body_too_large"
    BODY_TIMEOUT = "body_timeout"
    CLIENT_GONE = "client_gone_during_upload"


class Refused(Exception):
    """Why the middleware answers instead of the application: :meth:`ClientLimitsMiddleware.answer`
    sends it."""

    def __init__(
        self,
        reason: Rejection,
        status: int,
        code: str,
        message: str,
        retry_after: int = 0,
        *,
        close: bool = True,
    ) -> None:
        super().__init__(message)
        self.reason, self.status, self.code, self.message = reason, status, code, message
        self.retry_after = retry_after
        self.close = close
        """Close the connection (a body not read to its end)."""


def _error_body(scope: Scope, status: int, message: str, error_type: str, code: str) -> bytes:
    rid = (scope.get("state") or {}).get("request_id")
    if scope["path"] in ANTHROPIC_PATHS:
        body: dict[str, Any] = anthropic_errors.body(status, message)
        if rid:
            body["request_id"] = rid
    else:
        error = {"message": message, "type": error_type, "param": None, "code": code}
        if rid:
            error["request_id"] = rid
        body = {"error": error}
    return json.dumps(body).encode()


async def _answer(
    send: Send, status: int, body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ClientLimitsMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        limits: Callable[[], ClientLimits],
        *,
        on_reject: Callable[[Rejection], None] | None = None,
        on_gone: Callable[[Scope], None] | None = None,
        exempt: frozenset[str] = EXEMPT_PATHS,
    ) -> None:
        """``on_gone``: told of a request whose client left during its upload (the application
        never sees it; the gateway settles its trail as 499 there)."""
        self.app = app
        self.limits = limits
        self._on_reject = on_reject
        self._on_gone = on_gone
        self.exempt = exempt
        self.active = 0
        self.buffered = 0
        """Bytes of request bodies being read now, all requests together."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        limits = self.limits()
        refused = self.overloaded(limits)
        if refused is not None:
            await self.answer(scope, send, refused)
            return
        self.active += 1
        try:
            if scope["method"] not in _BODY_METHODS:
                await self.app(scope, receive, send)
                return
            body = await self.take_body(scope, receive, limits)
            if isinstance(body, Refused):
                await self.answer(scope, send, body)
            elif body is not None:
                await self.app(scope, _replay(body, receive), send)
        finally:
            self.active -= 1

    def overloaded(self, limits: ClientLimits) -> Refused | None:
        """A refusal (counted) when as many requests as allowed are in progress: the caller
        takes a slot (``active``) otherwise, and gives it back when the request is over."""
        if self.active < limits.max_concurrent_requests:
            return None
        self._count(Rejection.OVERLOADED)
        return Refused(
            Rejection.OVERLOADED,
            503,
            "gateway_overloaded",
            f"The gateway is serving its limit of {limits.max_concurrent_requests} "
            "concurrent requests; retry shortly.",
            limits.retry_after_s,
            close=False,
        )

    async def take_body(
        self, scope: Scope, receive: Receive, limits: ClientLimits
    ) -> bytes | Refused | None:
        """The whole body within the limits; a refusal to answer (counted); or None when the
        client went away during its upload (counted, ``on_gone`` told: nobody to answer)."""
        try:
            body = await self._read_body(scope, receive, limits)
        except Refused as refused:
            self._count(refused.reason)
            return refused
        if body is None:
            self._count(Rejection.CLIENT_GONE)
            if self._on_gone is not None:
                self._on_gone(scope)
        return body

    async def answer(self, scope: Scope, send: Send, refused: Refused) -> None:
        kind = "service_unavailable" if refused.status == 503 else "invalid_request_error"
        payload = _error_body(scope, refused.status, refused.message, kind, refused.code)
        extra = [(b"connection", b"close")] if refused.close else []
        if refused.retry_after:
            extra.append((b"retry-after", str(refused.retry_after).encode()))
        await _answer(send, refused.status, payload, extra)

    def _count(self, reason: Rejection) -> None:
        if self._on_reject is not None:
            self._on_reject(reason)

    async def _read_body(
        self, scope: Scope, receive: Receive, limits: ClientLimits
    ) -> bytes | None:
        """The whole body within the limits; None if the client went away; raises ``Refused``."""
        declared = _declared_length(scope)
        if declared is not None and declared > limits.max_body_bytes:
            raise _too_large(limits)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.body_timeout_s
        body = bytearray()
        try:
            while True:
                message = await _next_piece(receive, loop, deadline, limits.body_idle_s)
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                if len(body) + len(chunk) > limits.max_body_bytes:
                    raise _too_large(limits)
                if self.buffered + len(chunk) > limits.max_buffered_body_bytes:
                    raise Refused(
                        Rejection.BODY_BUFFERS_FULL,
                        503,
                        "gateway_overloaded",
                        "The gateway is reading too many request bodies at once; retry shortly.",
                        limits.retry_after_s,
                    )
                if not message.get("more_body", False):
                    if not body:  # the whole body in one message (the usual case): no copy
                        return bytes(chunk)
                    body += chunk
                    return bytes(body)
                body += chunk
                self.buffered += len(chunk)
        finally:
            self.buffered -= len(body)


def _too_large(limits: ClientLimits) -> Refused:
    return Refused(
        Rejection.BODY_TOO_LARGE,
        413,
        "request_too_large",
        f"Request body is larger than the limit of {limits.max_body_bytes} bytes.",
    )


class _Rest:
    """The rest of a coroutine already stepped once by hand to ``waits`` (what it awaits):
    awaiting this hands ``waits`` to the task and runs the coroutine on from there, as if the
    task had run it from the start (a cancellation is thrown into it where it waits)."""

    __slots__ = ("_coro", "_waits")

    def __init__(self, coro: Coroutine[Any, Any, Message], waits: Any) -> None:
        self._coro = coro
        self._waits = waits

    def __await__(self) -> Generator[Any, Any, Message]:
        coro, waits = self._coro, self._waits
        while True:
            try:
                sent = yield waits
            except BaseException as exc:  # thrown into the coroutine, as a task would
                try:
                    waits = coro.throw(exc)
                except StopIteration as done:
                    return cast(Message, done.value)
                continue
            try:
                waits = coro.send(sent)
            except StopIteration as done:
                return cast(Message, done.value)


async def _next_piece(
    receive: Receive, loop: asyncio.AbstractEventLoop, deadline: float, idle_s: float
) -> Message:
    """The next request message within the time left. One that has arrived already (a small
    body comes with its headers) is taken without arming a timer: ``receive()`` is stepped by
    hand once, and only if it has to wait does the rest run under the timeout."""
    wait = min(idle_s, deadline - loop.time())
    try:
        if wait <= 0:
            raise TimeoutError
        pending = receive()
        if not asyncio.iscoroutine(pending):
            async with asyncio.timeout(wait):
                return await pending
        try:
            waits = pending.send(None)
        except StopIteration as done:
            return cast(Message, done.value)
        async with asyncio.timeout(wait):
            return await _Rest(pending, waits)
    except TimeoutError:
        raise Refused(
            Rejection.BODY_TIMEOUT,
            408,
            "request_timeout",
            "The request body was not received in time.",
        ) from None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
