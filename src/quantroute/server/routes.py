"""HTTP routes. Handlers are thin: the request path lives in :mod:`quantroute.server.gateway`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from quantroute.access.control import AccessControl, may_use
from quantroute.access.keys import OPEN, Principal
from quantroute.core.model import Health
from quantroute.server.live import gateway_of
from quantroute.server.openapi import openapi_document


def _principal(request: Request) -> Principal:
    principal: Principal = (request.scope.get("state") or {}).get("principal", OPEN)
    return principal


async def chat_completions(request: Request) -> Response:
    return await gateway_of(request).handle("chat", request)


async def completions(request: Request) -> Response:
    return await gateway_of(request).handle("completion", request)


async def models(request: Request) -> Response:
    """The groups and served models the caller's key may use."""
    gateway, principal = gateway_of(request), _principal(request)
    groups, backends = gateway.config.groups, gateway.store.configs()
    data: list[dict[str, Any]] = [
        {"id": g.name, "object": "model", "owned_by": "quantroute", "variants": list(g.variants)}
        for g in groups
        if may_use(principal, g.name, groups, backends)
    ]
    seen = {g.name for g in groups}
    for backend in backends:
        if backend.served_model_name in seen or not may_use(
            principal, backend.served_model_name, groups, backends
        ):
            continue
        seen.add(backend.served_model_name)
        data.append(
            {
                "id": backend.served_model_name,
                "object": "model",
                "owned_by": "quantroute",
                "variant": backend.variant_id,
                "max_model_len": backend.max_seq_len,
            }
        )
    return JSONResponse({"object": "list", "data": data})


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """Whether this replica can serve: 503 once it drains (SIGTERM) or while it knows no backend
    at all (discovery found none yet), not when metrics are stale.

    A metrics outage on the backends would otherwise take every replica out of its Service at
    once, turning 503-with-Retry-After into connection refused; how requests are routed then is
    ``policy.metrics_outage``'s business."""
    gateway = gateway_of(request)
    snapshot = gateway.store.snapshot()
    fresh = [b.id for b in snapshot.backends if b.health is Health.FRESH]
    draining = request.app.state.lifecycle.draining
    ready = not draining and bool(snapshot.backends)
    body: dict[str, Any] = {
        "ready": ready,
        "draining": draining,
        "fresh_backends": len(fresh),
        "metrics_outage": not fresh,
        "metrics_outage_mode": gateway.config.policy.metrics_outage,
    }
    if _principal(request).admin:  # names only for admin keys (or without keys at all)
        body["fresh_backends"] = fresh
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.telemetry.registry), media_type=CONTENT_TYPE_LATEST
    )


async def admin_backends(request: Request) -> Response:
    gateway = gateway_of(request)
    matrix = gateway.matrix
    rows = gateway.store.admin_view()
    if gateway.prefix is not None:
        for row in rows:
            row["prefix"] = gateway.prefix.admin(str(row["id"]))
    return JSONResponse(
        {
            "backends": rows,
            "matrix": None if matrix.current is None else str(matrix.path or "(in memory)"),
        }
    )


async def admin_flow(request: Request) -> Response:
    """Flow control: its settings, and per saturated group the requests waiting (by latency
    class) and the oldest wait."""
    gateway = gateway_of(request)
    view = gateway.flow.flow.admin()
    view["on_saturation"] = {g.name: gateway.flow.mode(g.name) for g in gateway.config.groups}
    return JSONResponse(view)


async def route_explain(request: Request) -> Response:
    return JSONResponse(await gateway_of(request).explain(request))


async def admin_access(request: Request) -> Response:
    """Whether keys are on, the keys' names and rights (never digests), where quotas count."""
    access: AccessControl = request.app.state.access
    return JSONResponse(access.status())


async def openapi(request: Request) -> Response:
    gateway = gateway_of(request)
    names = [g.name for g in gateway.config.groups]
    names += [b.served_model_name for b in gateway.store.configs()]
    return JSONResponse(openapi_document(request.app.version, names))


def install(app: FastAPI) -> None:
    for prefix in ("/v1", ""):
        # The two proxy routes are plain Starlette routes: they take the raw Request and need
        # none of FastAPI's dependency solving, which costs a measurable share per request.
        app.add_route(f"{prefix}/chat/completions", chat_completions, methods=["POST"])
        app.add_route(f"{prefix}/completions", completions, methods=["POST"])
        app.add_api_route(f"{prefix}/models", models, methods=["GET"])
    app.add_api_route("/v1/route/explain", route_explain, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/admin/backends", admin_backends, methods=["GET"])
    app.add_api_route("/admin/access", admin_access, methods=["GET"])
    app.add_api_route("/admin/flow", admin_flow, methods=["GET"])
    app.add_api_route("/openapi.json", openapi, methods=["GET"])
