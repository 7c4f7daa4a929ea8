"""The two proxy routes as a bare ASGI callable, ahead of FastAPI's router.

``POST /v1/chat/completions`` and ``POST /v1/completions`` (and their aliases without ``/v1``)
are most of the gateway's traffic. :class:`ProxyRoutes` sits inside the access and client-limits
middlewares (which still run first, unchanged: request id, key, media type, concurrency, body
size and timeouts) and hands those requests straight to :meth:`Gateway.handle
<quantroute.server.gateway.Gateway.handle>`: no route matching over every route, no Starlette
``Request``, exception middleware or exit stack per request. The body is read from ``receive``
by :class:`Incoming`; the answer (a response object, itself an ASGI callable) is sent through
``send``. A :class:`~quantroute.errors.RequestError` is answered as the app's exception handler
answers it (:func:`quantroute.server.errors.request_error`); anything else propagates to the
app's last-resort handler (500) as before. Every other request, and any other method on these
paths (405), goes on to the FastAPI app.

:class:`GatewayApp` goes one step further out: a POST on these paths enters the user middlewares
(access, client limits, then :class:`ProxyRoutes`) directly, without FastAPI's and Starlette's
outer layers (the server-error, native-telemetry and body-limit middlewares: measured, FastAPI's
telemetry check alone looked up OpenTelemetry's tracer provider on every request once the SDK was
imported). The one thing those layers did for these requests, the last-resort 500, is done here
the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quantroute.errors import RequestError
from quantroute.proxy.parse import Kind
from quantroute.server import errors

if TYPE_CHECKING:
    from quantroute.server.gateway import Gateway

PROXY_PATHS: dict[str, Kind] = {
    "/v1/chat/completions": "chat",
    "/chat/completions": "chat",
    "/v1/completions": "completion",
    "/completions": "completion",
}


class HttpRequest(Protocol):
    """What the request path reads of a request: Starlette's ``Request`` (the other APIs'
    routes) and :class:`Incoming` (the proxy routes) both are one."""

    @property
    def scope(self) -> Scope: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def receive(self) -> Receive: ...

    async def body(self) -> bytes: ...


class Incoming:
    """A request on the proxy routes: its scope, lower-case headers (decoded on first use, the
    first of repeated ones wins, as Starlette's) and its body, read once from ``receive``."""

    __slots__ = ("_body", "_headers", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self._headers: dict[str, str] | None = None
        self._body: bytes | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            raw = self.scope["headers"]
            self._headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw)}
        return self._headers

    def pick(self, names: frozenset[bytes]) -> dict[str, str]:
        """The headers named in ``names`` (lower-case, as ASGI gives them), the first of
        repeated ones: only those decoded."""
        found: dict[str, str] = {}
        for key, value in self.scope["headers"]:
            if key in names:
                name = key.decode("latin-1")
                if name not in found:
                    found[name] = value.decode("latin-1")
        return found

    async def body(self) -> bytes:
        """The whole body; raises ``ClientDisconnect`` if the client leaves before its end."""
        if self._body is None:
            parts: list[bytes] = []
            more = True
            while more:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                parts.append(message.get("body", b""))
                more = message.get("more_body", False)
            self._body = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._body


class ProxyRoutes:
    """ASGI middleware: POSTs on :data:`PROXY_PATHS` go to the gateway, the rest to ``app``."""

    def __init__(self, app: ASGIApp, gateway: Callable[[], Gateway | None]) -> None:
        self.app = app
        self._gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = PROXY_PATHS.get(scope["path"]) if scope["type"] == "http" else None
        gateway = self._gateway() if kind is not None and scope["method"] == "POST" else None
        if gateway is None or kind is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await gateway.handle(kind, Incoming(scope, receive))
        except ClientDisconnect:  # gone before its body was read: nobody to answer
            return
        except RequestError as exc:  # rare: a Starlette Request is fine here
            response = await errors.request_error(Request(scope, receive), exc)
        await response(scope, receive, send)


class GatewayApp(FastAPI):
    """The gateway's FastAPI app: a POST on :data:`PROXY_PATHS` goes straight to the first
    middleware of type ``entry`` in the built stack (with the last-resort handler around it);
    everything else takes FastAPI's usual way. Without such a middleware, or with a
    ``root_path``, every request takes FastAPI's way."""

    def __init__(
        self,
        *args: Any,
        entry: type,
        last_resort: Callable[[Request, Exception], Awaitable[Response]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._entry_type = entry
        self._entry: ASGIApp | None = None
        self._looked = False
        self._last_resort = last_resort

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] in PROXY_PATHS
            and scope["method"] == "POST"
            and not self.root_path
        ):
            entry = self._entry if self._looked else self._find_entry()
            if entry is not None:
                scope["app"] = self
                await self._guarded(entry, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _find_entry(self) -> ASGIApp | None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        app: Any = self.middleware_stack
        for _ in range(16):  # the stack is a short chain of ``.app`` links
            if app is None or isinstance(app, self._entry_type):
                break
            app = getattr(app, "app", None)
        self._entry = cast("ASGIApp", app) if isinstance(app, self._entry_type) else None
        self._looked = True
        return self._entry

    async def _guarded(self, entry: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """As Starlette's ServerErrorMiddleware: an exception before the answer started gets the
        app's 500, and is raised on for the server to log."""
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await entry(scope, receive, sender)
        except Exception as exc:
            if not started:
                response = await self._last_resort(Request(scope), exc)
                await response(scope, receive, send)
            raise
