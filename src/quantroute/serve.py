"""`quantroute serve` and `quantroute check-config`: load the config once, then run or print it."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket

import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app

from quantroute.access.exposure import check_exposure
from quantroute.config import GatewayConfig, load_config
from quantroute.observe.settings import resolve_tracing
from quantroute.resilience.lifecycle import GatewayServer, Lifecycle
from quantroute.resilience.memory import tune_allocator, tune_gc
from quantroute.server.app import create_app
from quantroute.serving import EmbeddedServer, reuse_port_socket, run_workers, uvicorn_config
from quantroute.state.matrix_source import MatrixSource


def check_config(path: str) -> int:
    config = load_config(path)
    if config.matrix_path is not None:
        MatrixSource(config.matrix_path)
    observed = observability_note(config)  # a ConfigError before anything says OK
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    note = "capability matrix: " + (
        str(config.matrix_path) if config.matrix_path else "none (live state only)"
    )
    print(f"# {path}: OK, {len(config.backends)} backend(s), {len(config.groups)} group(s); {note}")
    print(f"# {observed}")
    discovery = config.discovery
    if discovery is not None and discovery.dns is not None:
        from quantroute.discovery.strict_dns import host_of, templates

        names = ", ".join(f"{b.id} ({host_of(b.url)})" for b in templates(config)) or "none"
        print(
            f"# strict DNS every {discovery.dns.interval_s:g} s, one backend per address: {names}"
        )
    if discovery is not None and discovery.kubernetes is not None:
        kube = discovery.kubernetes
        where = kube.namespace or "the gateway pod's namespace"
        print(f"# Kubernetes discovery: pods {kube.label_selector!r} in {where}")
    return 0


def observability_note(config: GatewayConfig) -> str:
    """What the gateway will do about tracing and the access log (raises ConfigError if it
    cannot: tracing on without the ``tracing`` extra)."""
    tracing = resolve_tracing(config.tracing, os.environ)
    if tracing is None:
        traced = "tracing off"
    else:
        where = tracing.endpoint or "from OTEL_EXPORTER_OTLP_* (default localhost:4318)"
        ratio = "OTEL_TRACES_SAMPLER" if tracing.sample_ratio is None else tracing.sample_ratio
        traced = f"tracing on: service {tracing.service_name}, sampling {ratio}, export {where}"
    log = config.access_log
    logged = "no access log" if log is None else f"access log to {log.path}"
    return f"{traced}; {logged}"


def metrics_server(registry: CollectorRegistry, host: str, port: int) -> EmbeddedServer:
    """/metrics alone on its own port (access.metrics_port): no key, for scrapers."""
    config = uvicorn_config(make_asgi_app(registry), host, port, log_level="warning")
    config.lifespan = "off"
    return EmbeddedServer(config)


async def _serve_both(
    main: uvicorn.Server,
    metrics: uvicorn.Server | None,
    sockets: tuple[socket.socket | None, socket.socket | None] = (None, None),
) -> None:
    """The API server owns the signals; the metrics server stops when it has stopped."""
    own, theirs = ([s] if s is not None else None for s in sockets)
    task = asyncio.create_task(metrics.serve(theirs)) if metrics is not None else None
    try:
        await main.serve(own)
    finally:
        if metrics is not None and task is not None:
            metrics.should_exit = True
            await task


def serve(
    path: str,
    *,
    host: str | None,
    port: int | None,
    log_level: str = "info",
    workers: int = 1,
) -> int:
    """Run the gateway until SIGTERM (drain, exit 0) or Ctrl-C; SIGHUP reloads ``path``.

    ``workers`` > 1: that many gateway processes on the one port (``SO_REUSEPORT``), each with
    its own scraper, in-flight account, queue and metrics (README "Several worker processes")."""
    if workers <= 1:
        return _serve(path, host, port, log_level)
    config = load_config(path)
    listen_host, listen_port = host or config.listen.host, port or config.listen.port
    check_exposure(config, listen_host)
    worker = functools.partial(_worker, path, listen_host, log_level, workers)
    return run_workers(workers, worker, listen_host, listen_port)


def _worker(path: str, host: str, log_level: str, count: int, index: int, port: int) -> int:
    """One of ``count`` workers (a spawned process): the gateway on the shared port."""
    return _serve(path, host, port, log_level, worker=(index, count))


def _serve(
    path: str,
    host: str | None,
    port: int | None,
    log_level: str,
    worker: tuple[int, int] | None = None,
) -> int:
    config = load_config(path)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    listen_host = host if host is not None else config.listen.host
    listen_port = port if port is not None else config.listen.port  # 0: any free port
    check_exposure(config, listen_host)
    tune_allocator()
    lifecycle = Lifecycle()
    app = create_app(config, config_path=path, lifecycle=lifecycle, trim_memory=True)
    drain = config.resilience.drain
    settings = uvicorn_config(
        app, listen_host, listen_port, log_level, drain.deadline_s, app.state.http_protocol
    )
    server = GatewayServer(
        settings, lifecycle, announce_s=drain.announce_s, on_reload=lambda: app.state.reload()
    )
    metrics_port = config.access.metrics_port
    metrics = (
        metrics_server(app.state.telemetry.registry, listen_host, metrics_port)
        if metrics_port is not None
        else None
    )
    sockets: tuple[socket.socket | None, socket.socket | None] = (None, None)
    if worker is not None:  # every worker binds the shared ports itself
        app.state.telemetry.set_worker(*worker, os.getpid())
        sockets = (
            reuse_port_socket(listen_host, listen_port),
            None if metrics_port is None else reuse_port_socket(listen_host, metrics_port),
        )
        for sock in sockets:
            if sock is not None:
                sock.listen(settings.backlog)  # connections wait in the backlog from here
        # uvicorn logs no address for sockets it is given: this worker's own line
        logging.getLogger("quantroute.serve").info(
            "Uvicorn running on http://%s:%d (worker %d of %d, pid %d)",
            listen_host,
            listen_port,
            *worker,
            os.getpid(),
        )
    tune_gc()  # after everything start-up builds, before the first request
    if metrics is None and worker is None:
        server.run()
    else:
        loop_factory = server.config.get_loop_factory()
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve_both(server, metrics, sockets))
    return 0
