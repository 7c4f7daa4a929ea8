"""HTTP routes. Handlers are thin: the request path lives in :mod:`quantroute.server.gateway`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from quantroute.core.model import Health
from quantroute.server.gateway import Gateway


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def chat_completions(request: Request) -> Response:
    return await _gateway(request).handle("chat", request)


async def completions(request: Request) -> Response:
    return await _gateway(request).handle("completion", request)


async def models(request: Request) -> Response:
    gateway = _gateway(request)
    data: list[dict[str, Any]] = [
        {"id": g.name, "object": "model", "owned_by": "quantroute", "variants": list(g.variants)}
        for g in gateway.config.groups
    ]
    seen = {g.name for g in gateway.config.groups}
    for backend in gateway.store.configs():
        if backend.served_model_name in seen:
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
    """Whether this replica can serve: 503 once it drains (SIGTERM), not when metrics are stale.

    A metrics outage on the backends would otherwise take every replica out of its Service at
    once, turning 503-with-Retry-After into connection refused; how requests are routed then is
    ``policy.metrics_outage``'s business."""
    gateway = _gateway(request)
    snapshot = gateway.store.snapshot()
    fresh = [b.id for b in snapshot.backends if b.health is Health.FRESH]
    draining = request.app.state.lifecycle.draining
    body = {
        "ready": not draining,
        "draining": draining,
        "fresh_backends": fresh,
        "metrics_outage": not fresh,
        "metrics_outage_mode": gateway.config.policy.metrics_outage,
    }
    return JSONResponse(body, status_code=503 if draining else 200)


async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.telemetry.registry), media_type=CONTENT_TYPE_LATEST
    )


async def admin_backends(request: Request) -> Response:
    gateway = _gateway(request)
    matrix = gateway.matrix
    return JSONResponse(
        {
            "backends": gateway.store.admin_view(),
            "matrix": None if matrix.current is None else str(matrix.path or "(in memory)"),
        }
    )


async def route_explain(request: Request) -> Response:
    return JSONResponse(await _gateway(request).explain(request))


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
