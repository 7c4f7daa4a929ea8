"""The request path from the HTTP edge: parse once, decide, forward (with retries), relay, account.

Each step has its own home: parsing in :mod:`quantroute.proxy.parse`, the decision step in
:mod:`quantroute.router`, forwarding and retries in :mod:`quantroute.proxy.forward`, the relay in
:mod:`quantroute.proxy.relay`, per-attempt accounting in :mod:`quantroute.proxy.attempt`, and
the in-flight account in :mod:`quantroute.state.inflight`. A :class:`RequestContext` carries the
request through them. ``POST /v1/route/explain`` runs the same parse and decision as a dry run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from quantroute.access.control import AccessControl
from quantroute.access.keys import OPEN, Principal
from quantroute.base import Clock
from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.model import Decision, RequestFeatures
from quantroute.errors import ClientDisconnected, RequestError
from quantroute.flow.control import FlowControl
from quantroute.flow.gate import FlowGate
from quantroute.observe.observer import Observer
from quantroute.observe.trail import NO_TRAIL, Trail
from quantroute.proxy.attempt import CLIENT_CLOSED
from quantroute.proxy.context import RequestContext
from quantroute.proxy.continuation import Continuer
from quantroute.proxy.exchange import Exchange, OpenAIExchange
from quantroute.proxy.forward import Forwarder
from quantroute.proxy.parse import Kind, ParsedRequest, parse_request
from quantroute.proxy.upstream import Upstream, after_upstream_send
from quantroute.resilience.budget import RetryBudget
from quantroute.router import Router
from quantroute.server.edge import HttpRequest, Incoming
from quantroute.state.matrix_source import MatrixSource
from quantroute.state.prefix import PrefixTracker
from quantroute.state.store import StateStore
from quantroute.telemetry import Telemetry

ROUTING_HEADERS = ("x-quantroute-task", "x-quantroute-priority")
TRACED_FROM_THE_BODY: dict[str, Kind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
}
"""Paths whose trail starts before the body is read (:meth:`Gateway.handle`)."""
FORWARD_HEADERS = {"Content-Type": "application/json"}


def _principal(request: HttpRequest) -> Principal:
    principal: Principal = (request.scope.get("state") or {}).get("principal", OPEN)
    return principal


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore,
        upstream: Upstream,
        matrix: MatrixSource,
        telemetry: Telemetry,
        prefix: PrefixTracker | None = None,
        *,
        access: AccessControl,
        budget: RetryBudget | None = None,
        clock: Clock | None = None,
        backends: Iterable[BackendConfig] | None = None,
        observer: Observer | None = None,
        flow: FlowControl | None = None,
    ) -> None:
        """One gateway per config: a reload builds a new one (requests in progress keep theirs);
        the store, in-flight account, passive health, budget, upstream and flow-control queue
        are shared (without ``flow``, the gateway keeps its own queue)."""
        self.config = config
        self.access = access
        self.observer = observer or Observer()
        self.store = store
        self.matrix = matrix
        self.router = Router(config, store, matrix, telemetry)
        self.prefix = prefix
        known = list(config.backends if backends is None else backends)
        self.forwarder = Forwarder(
            config,
            upstream,
            store.inflight,
            telemetry,
            {b.id: b for b in known},
            prefix,
            health=store.passive,
            budget=budget,
            clock=clock,
        )
        self.continuer = Continuer(config, self.forwarder, self.router.decide)
        if flow is None:
            flow = FlowControl(
                config.policy.flow_control,
                store.snapshot,
                telemetry.flow,
                clock or store.inflight.now,
            )
            store.subscribe(flow.pump)
        self.flow = FlowGate(config, self.router, flow)
        self._headers = (*ROUTING_HEADERS, config.policy.prefix.session_header.lower())
        self._wanted = frozenset(h.encode("latin-1") for h in self._headers)

    def set_backends(self, backends: Iterable[BackendConfig]) -> None:
        backends = list(backends)
        self.store.set_backends(backends)
        if self.store.passive is not None:
            self.store.passive.configure(
                self.config.resilience.outlier_detection, backends, self.config.groups
            )
        self.forwarder.backends = {b.id: b for b in backends}
        if self.prefix is not None:
            self.prefix.retain(b.id for b in backends)

    def parse(
        self,
        kind: Kind | None,
        raw: bytes,
        request: HttpRequest,
        *,
        dry_run: bool = False,
        principal: Principal = OPEN,
    ) -> ParsedRequest:
        """Parse and validate (with a prefix index: the prompt's blocks and session id too)."""
        if isinstance(request, Incoming):  # the proxy routes: only these headers decoded
            headers = request.pick(self._wanted)
        else:
            headers = {k: request.headers[k] for k in self._headers if k in request.headers}
        if principal.latency_class is not None:  # the key's default latency class
            headers.setdefault(ROUTING_HEADERS[1], principal.latency_class)
        sequence = self.router.next_sequence(dry_run=dry_run)
        settings = self.prefix.settings if self.prefix is not None else None
        limits = self.config.resilience.client
        return parse_request(
            kind, raw, headers, self.config.policy, sequence, limits, prefix=settings
        )

    def with_prefix(self, parsed: ParsedRequest) -> ParsedRequest:
        """``parsed`` with what the prefix index expects on each backend, looked up now, just
        before the decision (unchanged without an index or prompt blocks)."""
        if self.prefix is None or parsed.features.prompt is None:
            return parsed
        ids = [b.id for b in self.store.config_view()]
        return replace(parsed, features=self.prefix.annotate(parsed.features, ids))

    async def handle(self, kind: Kind, request: HttpRequest) -> Response:
        """Chat and completions: parsed here, so the trail has a parse phase. The trail (access
        log, spans) is settled when the request is over (:meth:`RequestContext.done`), or by
        :func:`_settle_failed` when it ends in an error the gateway answers itself."""
        trail = self._begin(kind, request)
        try:
            with trail.phase("parse"):
                raw = await request.body()
                parsed = self.parse(kind, raw, request, principal=_principal(request))
            trail.parsed(parsed.features)  # as dispatch does, one coroutine layer less
            return await self._dispatch(parsed, OpenAIExchange(parsed), request, trail)
        except BaseException as exc:
            _settle_failed(trail, exc)
            raise

    async def dispatch(
        self,
        parsed: ParsedRequest,
        exchange: Exchange,
        request: HttpRequest,
        trail: Trail | None = None,
    ) -> Response:
        """Decide and forward a parsed request of any API (``exchange`` says how): the key's
        access to the model, the group's caps and the quotas first (access/). The other APIs
        parse before they call this, so their trail starts here."""
        if trail is None:
            trail = self._begin(parsed.kind, request)
        try:
            trail.parsed(parsed.features)
            return await self._dispatch(parsed, exchange, request, trail)
        except BaseException as exc:
            _settle_failed(trail, exc)
            raise

    async def _dispatch(
        self, parsed: ParsedRequest, exchange: Exchange, request: HttpRequest, trail: Trail
    ) -> Response:
        state = request.scope.get("state") or {}
        principal = _principal(request)
        access, model, backends = self.access, parsed.features.model, self.store.config_view()
        access.authorize_model(principal, model, self.config.groups, backends)
        access.check_caps(model, parsed.body, self.config.groups, backends)
        # The client's Authorization stays here: a backend gets the gateway's own key.
        ctx = RequestContext(
            self.with_prefix(parsed),
            FORWARD_HEADERS,
            request.receive,
            exchange,
            trail=trail,
            request_id=state.get("request_id", ""),
            credentials=access.credentials.headers,
            show_decision=access.sees_decision(principal),
        )
        ctx.on_done(self.router.settled)  # the decision log (a no-op when it is off)
        if access.counted(principal):  # a key without limits has nothing to count
            admission = await access.admit(
                principal, access.admission_tokens(ctx.features, self.config.policy)
            )
            if admission is not None:
                state["ratelimit"] = admission.headers
                ctx.on_done(lambda done: access.settle(admission, done.used_tokens()))
        # What the answer needs but the upstream request does not (the decision's telemetry,
        # the decision header) is done once the request waits for its backend: off its path.
        later = after_upstream_send(asyncio.get_running_loop())
        try:
            with trail.phase("decide"):
                decision = self.router.decide(ctx.features, later=later)
                trail.decided(decision)
            admitted = decision
            if self.flow.may_queue(decision, ctx.features):  # else admit would return it as is
                try:
                    with trail.phase("queue"):
                        admitted = await self.flow.admit(
                            decision, ctx.features, request.receive, principal.priority
                        )
                except ClientDisconnected:  # gone while it waited for room: nothing was sent
                    return self._gone_while_queued(trail, decision.group or ctx.features.model)
            if admitted is not decision:
                trail.decided(admitted)
            ctx.decision = self.router.routed(admitted, ctx.features)
            if ctx.show_decision:
                later(ctx.decision_header)
            ctx.continuation = self.continuer.watch(ctx)
            return await self.forwarder.forward(ctx)
        finally:
            if not ctx.handed_over:  # else the response calls done() once it is sent
                ctx.done()

    def _gone_while_queued(self, trail: Trail, group: str) -> Response:
        trail.finish(CLIENT_CLOSED, error="client_disconnected")
        self.router.telemetry.requests.inc(("none", group, str(CLIENT_CLOSED)))
        return Response(status_code=CLIENT_CLOSED)

    def client_gone(self, request: HttpRequest) -> None:
        """A client left while sending its body (the client-limits middleware read it, so
        :meth:`handle` never ran): the trail says 499, as when ``handle`` notices it itself."""
        kind = TRACED_FROM_THE_BODY.get(request.scope["path"])
        if kind is not None:
            self._begin(kind, request).finish(CLIENT_CLOSED, error="client_disconnected")

    def _begin(self, kind: str, request: HttpRequest) -> Trail:
        """The request's trail, under the access middleware's request id and the key's name
        (never the key itself; none when no keys are configured)."""
        if not self.observer.active:
            return NO_TRAIL
        state = request.scope.get("state") or {}
        principal = _principal(request)
        return self.observer.begin(
            "POST",
            request.scope["path"],
            kind,
            request.headers,
            request_id=state.get("request_id", ""),
            key=None if principal is OPEN else principal.name,
        )

    async def explain(self, request: HttpRequest) -> dict[str, Any]:
        """The decision a request would get now, recording nothing (chat or completions body)."""
        raw = await request.body()
        parsed = self.parse(None, raw, request, dry_run=True, principal=_principal(request))
        parsed = self.with_prefix(parsed)
        decision = self.router.decide(parsed.features, dry_run=True)
        return explain_body(parsed, decision)


def _settle_failed(trail: Trail, exc: BaseException) -> None:
    """A request that ends in an exception settles its trail here (once: finish is idempotent).
    Called from an ``except`` clause, which costs nothing while no exception is raised, where a
    context manager around every request cost three Python calls and an object."""
    if isinstance(exc, RequestError):
        trail.finish(exc.status, error=exc.code)
    elif isinstance(exc, ClientDisconnect):  # gone while the body was still being read
        trail.finish(CLIENT_CLOSED, error="client_disconnected")
    else:
        trail.finish(500, error=type(exc).__name__)


def explain_body(parsed: ParsedRequest, decision: Decision) -> dict[str, Any]:
    candidates: list[dict[str, Any]] = [
        {
            "backend": backend_id,
            "admitted": True,
            "score": scores.total,
            "scores": scores.parts,
            "latency": _latency(decision, backend_id),
            "reasons": [],
            "rejections": [],
        }
        for backend_id, scores in decision.scores.items()
    ]
    candidates += [
        {
            "backend": backend_id,
            "admitted": False,
            "score": None,
            "scores": {},
            "reasons": [str(r) for r in rejections],
            "rejections": [{"filter": r.filter, "detail": r.detail} for r in rejections],
        }
        for backend_id, rejections in decision.rejected.items()
    ]
    f = parsed.features
    return {
        "outcome": decision.outcome.value,
        "chosen": decision.chosen,
        "ranked": list(decision.ranked),
        "group": decision.group,
        "quality_floor": decision.quality_floor,
        "relaxed_filters": list(decision.relaxed),
        "kv_pressure": list(decision.kv_pressure),
        "saturated": decision.saturated,
        "candidates": candidates,
        "features": {
            "kind": parsed.kind,
            "model": f.model,
            "prompt_tokens": f.prompt_tokens,
            "max_tokens": f.max_tokens,
            "stream": f.stream,
            "task": f.task,
            "latency_class": f.latency_class.value,
        },
        "prefix": None if f.prefix is None else prefix_explain(f),
    }


def _latency(decision: Decision, backend_id: str) -> dict[str, object] | None:
    """The latency scorer's figures: prior, measured factors, blend weight (None: pooling)."""
    estimate = decision.latency.get(backend_id)
    return None if estimate is None else estimate.as_dict()


def prefix_explain(f: RequestFeatures) -> dict[str, Any]:
    """What the prefix index expects for this request on each backend."""
    assert f.prefix is not None
    return {
        "expected_hit_share": {b: round(s, 4) for b, s in f.prefix.shares.items()},
        "session_id": f.session_id,
        "session_backend": f.prefix.session_backend,
        "prompt_blocks": len(f.prompt.keys) if f.prompt is not None else 0,
    }
