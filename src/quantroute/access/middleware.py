"""The access edge as a pure ASGI middleware (no per-request task, no body buffering).

For every HTTP request, before any route runs:

1. a request id (the client's ``x-request-id`` if it is a plain token, else a new one), returned
   in ``x-request-id`` on every response and kept in ``scope["state"]["request_id"]``;
2. the route's class: public (``/health``, ``/ready``, ``/openapi.json``), admin (``/admin/*``,
   ``/v1/route/explain``, and ``/metrics`` on the main port when keys are on), or a client route;
3. authentication (401) and, for admin routes, the admin right (403); the principal is put in
   ``scope["state"]["principal"]`` for the request path (model access, caps, quotas);
4. a body that is not JSON (415) on POST/PUT/PATCH.

It runs outside :class:`~quantroute.resilience.client_limits.ClientLimitsMiddleware`, which owns
the body's size (413) and read timeouts (408) and the concurrency limit (503): every refusal,
theirs too, carries the request id, and a caller without a valid key spends no concurrency slot
and no body buffer.

On the way out it adds the ``x-ratelimit-*`` headers (those the request path left in
``scope["state"]["ratelimit"]``, or the key's current counts) and drops
``x-quantroute-decision`` for callers who may not see it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from quantroute.access.control import AccessControl
from quantroute.access.errors import UnsupportedMediaType
from quantroute.access.hygiene import is_json, request_id
from quantroute.access.keys import OPEN, Principal
from quantroute.apis import anthropic_errors
from quantroute.errors import RequestError

log = logging.getLogger("quantroute.access")
PUBLIC = frozenset({"/health", "/ready", "/openapi.json"})
ADMIN_PREFIXES = ("/admin/", "/v1/route/explain")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_WANTED = frozenset(
    {b"authorization", b"x-api-key", b"content-type", b"content-length", b"x-request-id"}
)
DECISION_HEADER = b"x-quantroute-decision"
ANONYMOUS = Principal(name="anonymous", admin=False, models=frozenset(), limits=OPEN.limits)
"""Who calls a public route when keys are on (no key is looked at there)."""


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}


def error_body(exc: RequestError, rid: str) -> bytes:
    body = exc.body()
    error = body["error"]
    assert isinstance(error, dict)
    error["request_id"] = rid
    return json.dumps(body).encode()


ANTHROPIC_PATHS = frozenset({"/v1/messages"})
"""Routes whose clients (Anthropic's SDKs) expect Anthropic's error format."""


async def send_error(send: Send, exc: RequestError, rid: str, *, anthropic: bool = False) -> None:
    if anthropic:
        payload = json.dumps({**anthropic_errors.body(exc.status, exc.message), "request_id": rid})
        payload_bytes = payload.encode()
    else:
        payload_bytes = error_body(exc, rid)
    await _send_json(send, exc, rid, payload_bytes)


async def _send_json(send: Send, exc: RequestError, rid: str, payload: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", rid.encode()),
        *((k.lower().encode(), v.encode()) for k, v in exc.headers().items()),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class AccessMiddleware:
    def __init__(self, app: ASGIApp, access: AccessControl) -> None:
        self.app = app
        self.access = access
        self.admin_metrics = access.enabled and access.config.metrics_port is None
        self.metrics_elsewhere = access.config.metrics_port is not None

    def _is_admin_route(self, path: str) -> bool:
        return (
            path.startswith(ADMIN_PREFIXES)
            or path == "/admin"
            or (self.admin_metrics and path == "/metrics")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, admitted = self.enter(scope)
        if isinstance(admitted, RequestError):
            await self.refuse(scope, send, rid, admitted)
            return
        state = scope["state"]
        await self.app(scope, receive, self.sender(send, state, admitted, rid, scope["path"]))

    def enter(self, scope: Scope) -> tuple[str, Principal | RequestError]:
        """The request's id (kept in ``scope["state"]``, with the principal once admitted) and
        who calls, or why the request is refused."""
        headers = _headers(scope)
        rid = request_id(headers)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        try:
            principal = self._admit(scope, scope["path"], headers)
        except RequestError as exc:
            return rid, exc
        state["principal"] = principal
        return rid, principal

    async def refuse(self, scope: Scope, send: Send, rid: str, exc: RequestError) -> None:
        """Answer a request :meth:`enter` refused (and log it)."""
        path: str = scope["path"]
        client = scope.get("client") or ("?", 0)
        log.info(
            "request %s: %s %s from %s refused: %d %s",
            rid,
            scope["method"],
            path,
            client[0],
            exc.status,
            exc.code,
        )
        await send_error(send, exc, rid, anthropic=path in ANTHROPIC_PATHS)

    def _admit(self, scope: Scope, path: str, headers: Mapping[str, str]) -> Principal:
        access = self.access
        if path in PUBLIC:
            return OPEN if not access.enabled else ANONYMOUS
        if self.metrics_elsewhere and path == "/metrics":
            raise _NotHere()
        principal = access.authenticate(headers)
        if self._is_admin_route(path):
            access.require_admin(principal)
        if scope["method"] in _BODY_METHODS and not is_json(headers.get("content-type")):
            raise UnsupportedMediaType()
        return principal

    def plain(self, principal: Principal) -> bool:
        """Whether an answer to ``principal`` needs only its ``x-request-id`` added (it may see
        the decision header and has no quota counts to show), unless the request path left
        counts in ``scope["state"]["ratelimit"]``."""
        return self.access.sees_decision(principal) and not principal.limits.counted_per_minute

    async def headers_out(
        self,
        raw: list[tuple[bytes, bytes]],
        status: int,
        state: Mapping[str, object],
        principal: Principal,
        rid: str,
        path: str,
    ) -> list[tuple[bytes, bytes]]:
        """An answer's headers as the caller gets them: ``raw`` (appended to, or a new list when
        the decision header is taken out) with the request id and the quota counts (those the
        request path left in ``state["ratelimit"]``, or the key's current counts; a 429 keeps its
        own)."""
        if not self.access.sees_decision(principal):
            raw = [(k, v) for k, v in raw if k.lower() != DECISION_HEADER]
        raw.append((b"x-request-id", rid.encode()))
        limits = state.get("ratelimit")
        if limits is None and principal.limits.counted_per_minute and path not in PUBLIC:
            limits = await self.access.quotas.peek(principal)
        if isinstance(limits, dict):
            # a 429 carries its own (the counts before the refused request)
            have = {k.lower() for k, _ in raw} if status == 429 else ()
            raw.extend(
                (k.encode(), v.encode()) for k, v in limits.items() if k.encode() not in have
            )
        return raw

    def sender(
        self, send: Send, state: dict[str, object], principal: Principal, rid: str, path: str
    ) -> Send:
        """``send`` with :meth:`headers_out` applied to the answer's headers."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                # the response's own header list (sent once): appended to, not copied
                raw = message.setdefault("headers", [])
                if not isinstance(raw, list):  # any iterable is allowed by ASGI
                    raw = list(raw)
                message["headers"] = await self.headers_out(
                    raw, message.get("status", 200), state, principal, rid, path
                )
            await send(message)

        return wrapped


class _NotHere(RequestError):
    status = 404
    code = "not_found"

    def __init__(self) -> None:
        super().__init__("Not Found")
