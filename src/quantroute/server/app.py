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

from quantroute.apis import routes as api_routes
from quantroute.config import BackendConfig, GatewayConfig
from quantroute.observe.access_log import AccessLog
from quantroute.observe.observer import Observer
from quantroute.observe.settings import resolve_tracing
from quantroute.proxy.upstream import AiohttpUpstream, Upstream
from quantroute.server import errors, routes
from quantroute.server.gateway import Gateway
from quantroute.state.matrix_source import MatrixSource
from quantroute.state.scraper import Scraper
from quantroute.state.store import StateStore
from quantroute.telemetry import Telemetry

log = logging.getLogger("quantroute.server")
MATRIX_POLL_S = 2.0


async def _watch_matrix(source: MatrixSource, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        source.maybe_reload()


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


def create_app(
    config: GatewayConfig,
    *,
    upstream: Upstream | None = None,
    scrape_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
    matrix: MatrixSource | None = None,
    telemetry: Telemetry | None = None,
    matrix_poll_s: float = MATRIX_POLL_S,
    observer: Observer | None = None,
) -> FastAPI:
    """The gateway app; ``matrix_poll_s`` is how often the matrix file is checked for changes."""
    telemetry = telemetry or Telemetry()
    observer = observer or observer_from_config(config, telemetry)
    store = StateStore(config.backends, config.policy, clock)
    telemetry.watch_in_flight(store.inflight, lambda: [b.id for b in store.configs()])
    source = matrix or MatrixSource(config.matrix_path)
    holder: dict[str, Any] = {}

    def on_scrape(backend: BackendConfig, ok: bool) -> None:
        if not ok:
            telemetry.scrape_errors.labels(backend.id).inc()
        row = store.snapshot()
        for state in row.backends:
            kv = state.metrics.kv_cache_usage if state.metrics else None
            telemetry.set_backend_state(state.id, state.health, kv)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        up = upstream or AiohttpUpstream(config.policy.upstream_timeouts)
        client = scrape_client or httpx.AsyncClient(trust_env=False)
        observer.start()
        gateway = Gateway(config, store, up, source, telemetry, observer)
        app.state.gateway = gateway
        for backend in config.backends:
            telemetry.declare_backend(backend.id, backend.gpu_cost_per_hour)
        for group in config.groups:
            telemetry.declare_group(group.name)
        scraper = Scraper(store, config.policy, client, clock=clock, on_result=on_scrape)
        holder["scraper"] = scraper
        discovery = await _start_discovery(config, gateway, telemetry)
        await scraper.scrape_once()
        scraper.start()
        watcher = asyncio.create_task(
            _watch_matrix(source, matrix_poll_s), name="quantroute-matrix"
        )
        if source.current is None:
            log.warning("no capability matrix: routing on live backend state alone")
        try:
            async with api_routes.conversations(app, config.conversations, clock):
                yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if discovery is not None:
                await discovery.aclose()
            await scraper.stop()
            if scrape_client is None:
                await client.aclose()
            if upstream is None:
                await up.aclose()
            await asyncio.to_thread(observer.stop)  # flushes spans and the access log

    app = FastAPI(
        title="quantroute", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.store = store
    app.state.telemetry = telemetry
    app.state.matrix = source
    app.state.config = config
    errors.install(app)
    routes.install(app)
    api_routes.install(app)
    return app
