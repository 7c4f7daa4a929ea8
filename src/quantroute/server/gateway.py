"""The request path from the HTTP edge: parse once, decide, forward (with retries), relay, account.

Each step has its own home: parsing in :mod:`quantroute.proxy.parse`, the decision step in
:mod:`quantroute.router`, forwarding and retries in :mod:`quantroute.proxy.forward`, the relay in
:mod:`quantroute.proxy.relay`, per-attempt accounting in :mod:`quantroute.proxy.attempt`, and
the in-flight account in :mod:`quantroute.state.inflight`. A :class:`RequestContext` carries the
request through them. ``POST /v1/route/explain`` runs the same parse and decision as a dry run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.model import Decision
from quantroute.errors import RequestError
from quantroute.observe.observer import Observer
from quantroute.observe.trail import Trail
from quantroute.proxy.attempt import CLIENT_CLOSED
from quantroute.proxy.context import RequestContext
from quantroute.proxy.continuation import Continuer
from quantroute.proxy.exchange import Exchange, OpenAIExchange
from quantroute.proxy.forward import Forwarder
from quantroute.proxy.parse import Kind, ParsedRequest, parse_request
from quantroute.proxy.upstream import Upstream
from quantroute.router import Router
from quantroute.state.matrix_source import MatrixSource
from quantroute.state.store import StateStore
from quantroute.telemetry import Telemetry

ROUTING_HEADERS = ("x-quantroute-task", "x-quantroute-priority")


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore,
        upstream: Upstream,
        matrix: MatrixSource,
        telemetry: Telemetry,
        observer: Observer | None = None,
    ) -> None:
        self.config = config
        self.observer = observer or Observer()
        self.store = store
        self.matrix = matrix
        self.router = Router(config, store, matrix, telemetry)
        self.forwarder = Forwarder(
            config.policy, upstream, store.inflight, telemetry, {b.id: b for b in config.backends}
        )
        self.continuer = Continuer(config, self.forwarder, self.router.decide)

    def set_backends(self, backends: Iterable[BackendConfig]) -> None:
        backends = list(backends)
        self.store.set_backends(backends)
        self.forwarder.backends = {b.id: b for b in backends}

    def parse(
        self, kind: Kind | None, raw: bytes, request: Request, *, dry_run: bool = False
    ) -> ParsedRequest:
        headers = {k: request.headers[k] for k in ROUTING_HEADERS if k in request.headers}
        sequence = self.router.next_sequence(dry_run=dry_run)
        return parse_request(kind, raw, headers, self.config.policy, sequence)

    async def handle(self, kind: Kind, request: Request) -> Response:
        """Chat and completions: parsed here, so the trail has a parse phase. The trail (access
        log, spans) is settled by the attempt that answers (:mod:`quantroute.proxy.attempt`),
        or by :func:`_settles` when the request ends in an error."""
        trail = self._begin(kind, request)
        with _settles(trail):
            with trail.phase("parse"):
                parsed = self.parse(kind, await request.body(), request)
            return await self.dispatch(parsed, OpenAIExchange(parsed), request, trail)

    async def dispatch(
        self,
        parsed: ParsedRequest,
        exchange: Exchange,
        request: Request,
        trail: Trail | None = None,
    ) -> Response:
        """Decide and forward a parsed request of any API (``exchange`` says how). The other
        APIs parse before they call this, so their trail starts here."""
        if trail is None:
            trail = self._begin(parsed.kind, request)
        with _settles(trail):
            trail.parsed(parsed.features)
            forward = {"Content-Type": "application/json"}
            if "authorization" in request.headers:
                forward["Authorization"] = request.headers["authorization"]
            ctx = RequestContext(parsed, forward, request.receive, exchange, trail=trail)
            with trail.phase("decide"):
                decision = self.router.decide(ctx.features)
                trail.decided(decision)
            ctx.decision = self.router.routed(decision, ctx.features)
            ctx.continuation = self.continuer.watch(ctx)
            return await self.forwarder.forward(ctx)

    def _begin(self, kind: str, request: Request) -> Trail:
        return self.observer.begin("POST", request.scope["path"], kind, request.headers)

    async def explain(self, request: Request) -> dict[str, Any]:
        """The decision a request would get now, recording nothing (chat or completions body)."""
        parsed = self.parse(None, await request.body(), request, dry_run=True)
        decision = self.router.decide(parsed.features, dry_run=True)
        return explain_body(parsed, decision)


@contextlib.contextmanager
def _settles(trail: Trail) -> Iterator[None]:
    """A request that ends in an exception settles its trail here (once: finish is idempotent)."""
    try:
        yield
    except RequestError as exc:
        trail.finish(exc.status, error=exc.code)
        raise
    except ClientDisconnect:  # gone while the body was still being read
        trail.finish(CLIENT_CLOSED, error="client_disconnected")
        raise
    except BaseException as exc:
        trail.finish(500, error=type(exc).__name__)
        raise


def explain_body(parsed: ParsedRequest, decision: Decision) -> dict[str, Any]:
    candidates: list[dict[str, Any]] = [
        {
            "backend": backend_id,
            "admitted": True,
            "score": scores.total,
            "scores": scores.parts,
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
    }
