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
the same way. And when those three middlewares are the stack's first, it runs them as one
(:class:`ProxyEdge`): their own steps, one coroutine, the answer's headers set before it is
sent rather than by a wrapper around every message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quantroute.access.keys import Principal
from quantroute.access.middleware import AccessMiddleware
from quantroute.errors import RequestError
from quantroute.proxy.parse import Kind
from quantroute.resilience.client_limits import ClientLimitsMiddleware, Refused
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

    def __init__(self, scope: Scope, receive: Receive, body: bytes | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self._headers: dict[str, str] | None = None
        self._body = body

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
        self.gateway = gateway
        """The live gateway (None: none yet; the request goes on to the app)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = PROXY_PATHS.get(scope["path"]) if scope["type"] == "http" else None
        gateway = self.gateway() if kind is not None and scope["method"] == "POST" else None
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


class ProxyEdge:
    """The access, client-limits and proxy-routes middlewares run as one, for a POST on
    :data:`PROXY_PATHS`: the same steps in the same order, each through its middleware's own
    methods (:meth:`AccessMiddleware.enter`, :meth:`ClientLimitsMiddleware.overloaded` and
    :meth:`~ClientLimitsMiddleware.take_body`, the same answers to what they refuse), without a
    coroutine per layer, the body handed on through a replaying ``receive``, or a wrapper around
    every message sent: the answer's own headers (the request id, the quota counts, the decision
    header taken out for callers who may not see it) are set on the response before it is sent.
    The middlewares themselves still serve every other request, and are the reference a test
    holds this equal to."""

    def __init__(
        self,
        access: AccessMiddleware,
        limits: ClientLimitsMiddleware,
        routes: ProxyRoutes,
        last_resort: Callable[[Request, Exception], Awaitable[Response]],
    ) -> None:
        self.access = access
        self.limits = limits
        self.routes = routes
        self._last_resort = last_resort

    @classmethod
    def over(
        cls,
        entry: ASGIApp | None,
        last_resort: Callable[[Request, Exception], Awaitable[Response]],
    ) -> ProxyEdge | None:
        """The edge for a stack whose first middlewares are exactly access, client limits and
        the proxy routes, in that order (else None: the stack is run as it is)."""
        limits = getattr(entry, "app", None)
        routes = getattr(limits, "app", None)
        if (
            type(entry) is AccessMiddleware
            and type(limits) is ClientLimitsMiddleware
            and type(routes) is ProxyRoutes
            and limits.exempt.isdisjoint(PROXY_PATHS)
        ):
            return cls(entry, limits, routes, last_resort)
        return None

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, kind: Kind, gateway: Gateway
    ) -> None:
        """Serve one proxy POST. An exception before anything was sent gets the app's 500 and
        is raised on for the server to log (as ``GatewayApp`` does around the middlewares)."""
        access, limits = self.access, self.limits
        sent = False
        try:
            rid, principal = access.enter(scope)
            if isinstance(principal, RequestError):
                sent = True
                await access.refuse(scope, send, rid, principal)
                return
            settings = limits.limits()
            refused = limits.overloaded(settings)
            if refused is not None:
                sent = True
                await self._refuse(scope, send, refused, principal, rid)
                return
            limits.active += 1
            try:
                body = await limits.take_body(scope, receive, settings)
                if body is None:
                    return  # gone during its upload: nobody to answer
                if isinstance(body, Refused):
                    sent = True
                    await self._refuse(scope, send, body, principal, rid)
                    return
                try:  # the body is read: no ClientDisconnect can come from here
                    response = await gateway.handle(kind, Incoming(scope, receive, body))
                except RequestError as exc:  # rare: a Starlette Request is fine here
                    response = await errors.request_error(Request(scope, receive), exc)
                await self._headers(response, scope["path"], scope["state"], principal, rid)
                sent = True
                await response(scope, receive, send)
            finally:
                limits.active -= 1
        except Exception as exc:
            if not sent:
                response = await self._last_resort(Request(scope), exc)
                await response(scope, receive, send)
            raise

    async def _headers(
        self,
        response: Response,
        path: str,
        state: dict[str, object],
        principal: Principal,
        rid: str,
    ) -> None:
        """The answer's headers as the access middleware would send them."""
        if self.access.plain(principal) and state.get("ratelimit") is None:
            response.raw_headers.append((b"x-request-id", rid.encode()))
        else:
            response.raw_headers = await self.access.headers_out(
                response.raw_headers, response.status_code, state, principal, rid, path
            )

    async def _refuse(
        self, scope: Scope, send: Send, refused: Refused, principal: Principal, rid: str
    ) -> None:
        """A client-limits refusal, answered as the access middleware would pass it on."""
        state = scope["state"]
        await self.limits.answer(
            scope, self.access.sender(send, state, principal, rid, scope["path"]), refused
        )


class GatewayApp(FastAPI):
    """The gateway's FastAPI app: a POST on :data:`PROXY_PATHS` goes straight to the first
    middleware of type ``entry`` in the built stack (with the last-resort handler around it),
    or, when that stack starts with the access, client-limits and proxy-routes middlewares, to
    their :class:`ProxyEdge`; everything else takes FastAPI's usual way. Without such a
    middleware, or with a ``root_path``, every request takes FastAPI's way. ``fused_edge =
    False`` keeps the middlewares' own path for proxy POSTs too (the edge's reference)."""

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
        self._edge: ProxyEdge | None = None
        self._looked = False
        self._last_resort = last_resort
        self.fused_edge = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.root_path:
            kind = PROXY_PATHS.get(scope["path"])
            if kind is not None:
                entry = self._entry if self._looked else self._find_entry()
                if entry is not None:
                    scope["app"] = self
                    edge = self._edge if self.fused_edge else None
                    gateway = None if edge is None else edge.routes.gateway()
                    if edge is not None and gateway is not None:
                        await edge(scope, receive, send, kind, gateway)
                    else:
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
        self._edge = ProxyEdge.over(self._entry, self._last_resort)
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
