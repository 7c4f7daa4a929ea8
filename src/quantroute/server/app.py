"""``create_app(config, ...)``: the FastAPI application with its I/O injected.

Nothing starts at import time. The lifespan opens the upstream session and the scrape client,
starts the scrape loop and the matrix watcher, and closes all of them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
from fastapi import FastAPI

from quantroute.access.control import AccessControl
from quantroute.access.middleware import AccessMiddleware
from quantroute.apis import routes as api_routes
from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.plugins import compile_plan
from quantroute.observe.access_log import AccessLog
from quantroute.observe.observer import Observer
from quantroute.observe.settings import resolve_tracing
from quantroute.proxy.upstream import AiohttpUpstream, Upstream
from quantroute.server import errors, routes
from quantroute.server.gateway import Gateway
from quantroute.state.matrix_source import MatrixSource
from quantroute.state.prefix import PrefixTracker
from quantroute.state.scraper import Scraper
from quantroute.state.store import StateStore
from quantroute.telemetry import Telemetry

log = logging.getLogger("quantroute.server")
MATRIX_POLL_S = 2.0
KEYS_POLL_S = 2.0
LEASE_MARGIN_S = 60.0
"""A concurrency lease outlives the longest response the gateway allows by this much."""


async def _watch_matrix(source: MatrixSource, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        source.maybe_reload()


async def _watch_keys(access: AccessControl, interval_s: float) -> None:
    """Re-read access.keys_file when it changes (a rotated Secret): revocation without a restart."""
    while True:
        await asyncio.sleep(interval_s)
        access.keys.maybe_reload()


class _Closable(Protocol):
    async def aclose(self) -> None: ...


async def _start_discovery(
    config: GatewayConfig, gateway: Gateway, telemetry: Telemetry
) -> _Closable | None:
    """Discovery (strict DNS, Kubernetes), when configured: backends join and leave routing
    without a restart; the series of a backend that left are dropped from the metrics."""
    if config.discovery is None:
        return None
    from quantroute.discovery import start_discovery

    current = {b.id for b in config.backends}

    def apply(backends: list[BackendConfig]) -> None:
        gateway.set_backends(backends)
        for backend in backends:
            telemetry.declare_backend(backend.id, backend.gpu_cost_per_hour)
        for gone in current - {b.id for b in backends}:
            telemetry.forget_backend(gone)
        current.clear()
        current.update(b.id for b in backends)
        log.info("discovery: %d backend(s): %s", len(backends), ", ".join(b.id for b in backends))

    return await start_discovery(config, apply)


def observer_from_config(config: GatewayConfig, telemetry: Telemetry) -> Observer:
    """Tracing and the access log as configured (``OTEL_*`` read here, once). Raises
    ConfigError when tracing is on but the ``tracing`` extra is not installed."""
    settings = resolve_tracing(config.tracing, os.environ)
    log = None
    if config.access_log is not None:
        log = AccessLog(config.access_log, on_drop=telemetry.access_log_dropped.inc)
    return Observer(settings=settings, access_log=log)


def _prefix_tracker(config: GatewayConfig, clock: Callable[[], float]) -> PrefixTracker | None:
    """The prefix index, when the policy has a scorer that reads it (else nothing is kept)."""
    if not compile_plan(config.policy).tracks_prefix:
        return None
    return PrefixTracker(config.policy.prefix, config.policy.chars_per_token, clock)


def create_app(
    config: GatewayConfig,
    *,
    upstream: Upstream | None = None,
    scrape_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
    matrix: MatrixSource | None = None,
    telemetry: Telemetry | None = None,
    matrix_poll_s: float = MATRIX_POLL_S,
    access: AccessControl | None = None,
    keys_poll_s: float = KEYS_POLL_S,
    observer: Observer | None = None,
) -> FastAPI:
    """The gateway app; ``matrix_poll_s`` is how often the matrix file is checked for changes."""
    telemetry = telemetry or Telemetry()
    observer = observer or observer_from_config(config, telemetry)
    lease_ttl_s = config.policy.upstream_timeouts.total_s + LEASE_MARGIN_S
    guard = access or AccessControl(config.access, telemetry.registry, lease_ttl_s=lease_ttl_s)
    store = StateStore(config.backends, config.policy, clock)
    telemetry.watch_in_flight(store.inflight, lambda: [b.id for b in store.configs()])
    source = matrix or MatrixSource(config.matrix_path)
    holder: dict[str, Any] = {}

    prefix = _prefix_tracker(config, clock)

    def on_scrape(backend: BackendConfig, ok: bool) -> None:
        if not ok:
            telemetry.scrape_errors.labels(backend.id).inc()
        row = store.snapshot()
        for state in row.backends:
            m = state.metrics
            telemetry.set_backend_state(state.id, state.health, m.kv_cache_usage if m else None)
            telemetry.set_backend_prefix_hit(state.id, m.prefix_hit_rate if m else None)
            if prefix is not None and m is not None:
                prefix.set_capacity(state.id, m.kv_capacity_tokens)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        up = upstream or AiohttpUpstream(config.policy.upstream_timeouts)
        client = scrape_client or httpx.AsyncClient(trust_env=False)
        observer.start()
        gateway = Gateway(
            config, store, up, source, telemetry, prefix, access=guard, observer=observer
        )
        app.state.gateway = gateway
        for backend in config.backends:
            telemetry.declare_backend(backend.id, backend.gpu_cost_per_hour)
            if prefix is not None:
                telemetry.declare_prefix(backend.id)
        for group in config.groups:
            telemetry.declare_group(group.name)
        scraper = Scraper(store, config.policy, client, clock=clock, on_result=on_scrape)
        holder["scraper"] = scraper
        discovery = await _start_discovery(config, gateway, telemetry)
        await scraper.scrape_once()
        scraper.start()
        await guard.start()
        keys_watcher = asyncio.create_task(_watch_keys(guard, keys_poll_s), name="quantroute-keys")
        watcher = asyncio.create_task(
            _watch_matrix(source, matrix_poll_s), name="quantroute-matrix"
        )
        if source.current is None:
            log.warning("no capability matrix: routing on live backend state alone")
        if not guard.enabled:
            log.warning("no API keys configured: every caller may use every model and /admin")
        try:
            async with api_routes.conversations(app, config.conversations, clock):
                yield
        finally:
            for task in (watcher, keys_watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if discovery is not None:
                await discovery.aclose()
            await scraper.stop()
            if scrape_client is None:
                await client.aclose()
            if upstream is None:
                await up.aclose()
            await guard.aclose()
            await asyncio.to_thread(observer.stop)  # flushes spans and the access log

    app = FastAPI(
        title="quantroute",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the hand-written document of the public routes: server/openapi.py
    )
    app.state.store = store
    app.state.telemetry = telemetry
    app.state.matrix = source
    app.state.config = config
    app.state.access = guard
    errors.install(app)
    routes.install(app)
    api_routes.install(app)
    app.add_middleware(AccessMiddleware, access=guard)
    return app
