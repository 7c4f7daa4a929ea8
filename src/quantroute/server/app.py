"""``create_app(config, ...)``: the FastAPI application with its I/O injected.

Nothing starts at import time. The lifespan opens the upstream session and the scrape client,
starts the scrape loop, the matrix and keys watchers and (with a config file) the config
watcher, and closes all of them on shutdown. The running config and gateway live in a
:class:`~quantroute.server.runtime.Runtime`, swapped on reload.

Three ASGI middlewares wrap the app, outermost first:

1. :class:`~quantroute.access.middleware.AccessMiddleware`: the request id (so every answer,
   refusals included, carries ``x-request-id``), authentication (401/403) and the media type
   (415), before the request costs anything;
2. :class:`~quantroute.resilience.client_limits.ClientLimitsMiddleware`: the concurrency limit
   (503 + ``Retry-After``), then the body, read counting its bytes (the one body-size limit,
   ``resilience.client.max_body_bytes``: 413) within the body timeouts (408);
3. :class:`~quantroute.server.edge.ProxyRoutes`: the two proxy routes handed straight to the
   gateway (no router, no Starlette ``Request`` per request); everything else goes on to FastAPI.

A POST on a proxy route runs the three as one (:class:`~quantroute.server.edge.ProxyEdge`: the
same steps through the middlewares' own methods, held equal to them by a test).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Scope

from quantroute.access.control import AccessControl
from quantroute.access.middleware import AccessMiddleware
from quantroute.apis import routes as api_routes
from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.model import Health
from quantroute.core.plugins import compile_plan
from quantroute.observe.access_log import AccessLog
from quantroute.observe.observer import Observer
from quantroute.observe.settings import resolve_tracing
from quantroute.proxy.upstream import AiohttpUpstream, Upstream
from quantroute.resilience.client_limits import ClientLimitsMiddleware, Rejection
from quantroute.resilience.header_timeout import protocol_class
from quantroute.resilience.lifecycle import Lifecycle
from quantroute.resilience.memory import trim_forever
from quantroute.resilience.passive import PassiveHealthMonitor
from quantroute.resilience.reload import ConfigReloader
from quantroute.resilience.settings import ClientLimits, ReloadSettings
from quantroute.server import errors, routes
from quantroute.server.edge import GatewayApp, ProxyRoutes
from quantroute.server.gateway import Gateway
from quantroute.server.live import Live
from quantroute.server.runtime import Runtime
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


async def _watch_matrix(runtime: Runtime, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        runtime.matrix.maybe_reload()


async def _watch_keys(access: AccessControl, interval_s: float) -> None:
    """Re-read access.keys_file when it changes (a rotated Secret): revocation without a restart."""
    while True:
        await asyncio.sleep(interval_s)
        access.keys.maybe_reload()


class _Closable(Protocol):
    async def aclose(self) -> None: ...


async def _start_discovery(config: GatewayConfig, runtime: Runtime) -> _Closable | None:
    """Discovery (strict DNS, Kubernetes), when configured: backends join and leave routing
    without a restart; the series of a backend that left are dropped from the metrics."""
    if config.discovery is None:
        return None
    from quantroute.discovery import start_discovery

    return await start_discovery(config, runtime.on_discovery)


def _validate_matrix(config: GatewayConfig) -> None:
    if config.matrix_path is not None:
        MatrixSource(config.matrix_path)  # raises MatrixError (a ConfigError) when unusable


class _ScrapeReport:
    """After each scrape: state metrics, the schema self-test once, slow start after recovery,
    and the prefix index's view of each backend's cache (hit rate, capacity)."""

    def __init__(
        self, store: StateStore, telemetry: Telemetry, prefix: PrefixTracker | None = None
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.prefix = prefix
        self.last: dict[str, Health] = {}
        self.after: Callable[[], None] = lambda: None

    def __call__(self, backend: BackendConfig, ok: bool) -> None:
        t = self.telemetry
        if not ok:
            t.scrape_errors.labels(backend.id).inc()
        report = self.store.take_schema_report(backend.id) if ok else None
        if report is not None:
            t.resilience.schema_ok.labels(backend.id).set(1 if report.ok else 0)
            if not report.ok:
                log.warning("backend %r metric schema self-test: %s", backend.id, report.describe())
        for state in self.store.snapshot().backends:
            m = state.metrics
            t.set_backend_state(state.id, state.health, m.kv_cache_usage if m else None)
            t.set_backend_prefix_hit(state.id, m.prefix_hit_rate if m else None)
            if self.prefix is not None and m is not None:
                self.prefix.set_capacity(state.id, m.kv_capacity_tokens)
            before = self.last.get(state.id)
            self.last[state.id] = state.health
            passive = self.store.passive
            if passive is None or before is state.health:
                continue
            passive.set_down(state.id, state.health is Health.DOWN)
            if before in (Health.DOWN, Health.STALE) and state.health is Health.FRESH:
                passive.recovered(state.id)
        self.after()


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
    config_path: str | Path | None = None,
    lifecycle: Lifecycle | None = None,
    trim_memory: bool = False,
    access: AccessControl | None = None,
    keys_poll_s: float = KEYS_POLL_S,
    observer: Observer | None = None,
) -> FastAPI:
    """The gateway app; ``matrix_poll_s`` is how often the matrix file is checked for changes,
    ``config_path`` the file to hot-reload (watched, and on SIGHUP through ``serve``);
    ``trim_memory`` returns freed heap memory to the system every few seconds (``serve``)."""
    telemetry = telemetry or Telemetry()
    observer = observer or observer_from_config(config, telemetry)
    lifecycle = lifecycle or Lifecycle()
    lifecycle.on_drain(lambda: telemetry.resilience.draining.set(1))
    lease_ttl_s = config.policy.upstream_timeouts.total_s + LEASE_MARGIN_S
    guard = access or AccessControl(config.access, telemetry.registry, lease_ttl_s=lease_ttl_s)
    passive = PassiveHealthMonitor(config.resilience.outlier_detection, clock, telemetry.resilience)
    store = StateStore(config.backends, config.policy, clock, passive)
    telemetry.watch_in_flight(store.inflight, lambda: [b.id for b in store.configs()])
    source = matrix or MatrixSource(config.matrix_path)
    live = Live(config.resilience.client)
    conn_limits = config.resilience.client
    http_protocol = protocol_class(conn_limits.header_timeout_s, conn_limits.keep_alive_s)
    http_protocol.hooks.append(telemetry.resilience.client_rejections.labels("header_timeout").inc)

    prefix = _prefix_tracker(config, clock)

    def swapped(gateway: Gateway) -> None:
        live.swap(gateway)
        http_protocol.header_timeout_s = gateway.config.resilience.client.header_timeout_s
        http_protocol.keep_alive_s = gateway.config.resilience.client.keep_alive_s

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit = config.resilience.upstream.connections_per_backend
        up = upstream or AiohttpUpstream(connections_per_backend=limit)
        client = scrape_client or httpx.AsyncClient(trust_env=False)
        observer.start()
        runtime = Runtime(
            config,
            store,
            up,
            source,
            telemetry,
            clock,
            guard,
            prefix,
            observer=observer,
            on_swap=swapped,
        )
        app.state.runtime = runtime
        report = _ScrapeReport(store, telemetry, prefix)
        report.after = runtime.sweep
        scraper = Scraper(store, config.policy, client, clock=clock, on_result=report)
        runtime.scraper = scraper
        discovery = await _start_discovery(config, runtime)
        await scraper.scrape_once()
        scraper.start()
        await guard.start()
        tasks = [
            asyncio.create_task(_watch_matrix(runtime, matrix_poll_s), name="quantroute-matrix"),
            asyncio.create_task(_watch_keys(guard, keys_poll_s), name="quantroute-keys"),
        ]
        if trim_memory:
            tasks.append(asyncio.create_task(trim_forever(), name="quantroute-trim"))
        if config_path is not None:
            reloader = ConfigReloader(
                config_path, runtime.apply, telemetry.resilience, validate=_validate_matrix
            )
            app.state.reload = lambda: reloader.reload("SIGHUP")

            def settings() -> ReloadSettings:
                return runtime.config.resilience.reload

            watch = reloader.watch(lambda: settings().poll_s, lambda: settings().watch)
            tasks.append(asyncio.create_task(watch, name="quantroute-config"))
        if source.current is None:
            log.warning("no capability matrix: routing on live backend state alone")
        if not guard.enabled:
            log.warning("no API keys configured: every caller may use every model and /admin")
        try:
            async with api_routes.conversations(app, config.conversations, clock):
                yield
        finally:
            for task in tasks:
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

    app = GatewayApp(
        entry=AccessMiddleware,
        last_resort=errors.unexpected,
        title="quantroute",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # the hand-written document of the public routes: server/openapi.py
    )
    app.state.store = store
    app.state.telemetry = telemetry
    app.state.live = live
    app.state.lifecycle = lifecycle
    app.state.http_protocol = http_protocol
    app.state.reload = lambda: log.warning("SIGHUP: no config file to reload")
    app.state.access = guard

    def limits() -> ClientLimits:
        return live.limits

    def rejected(reason: Rejection) -> None:
        telemetry.resilience.client_rejections.labels(reason.value).inc()

    def gone(scope: Scope) -> None:
        gateway = live.gateway
        if gateway is not None:
            gateway.client_gone(Request(scope))

    errors.install(app)
    routes.install(app)
    api_routes.install(app)
    # the last added runs first: access (request id, key) outside the client limits, and the
    # proxy routes' own edge inside both, ahead of FastAPI's router
    app.add_middleware(ProxyRoutes, gateway=lambda: live.gateway)
    app.add_middleware(ClientLimitsMiddleware, limits=limits, on_reject=rejected, on_gone=gone)
    app.add_middleware(AccessMiddleware, access=guard)
    return app
