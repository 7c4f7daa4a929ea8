"""uvicorn as quantroute runs it, once: the gateway (``serve``), the demo, the simulator and the
test/benchmark harness all build their server here, so tests run the production event loop
(uvloop) and HTTP parser (httptools)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host (demo, tests, benchmarks)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "info",
    drain_s: float = 30.0,
    http: type[asyncio.Protocol] | str = "httptools",
) -> uvicorn.Config:
    """uvicorn as the gateway runs it; on shutdown, open streams get ``drain_s`` to finish.

    ``http`` is the HTTP protocol: the gateway passes its httptools protocol with a header read
    timeout (``app.state.http_protocol``, see :mod:`quantroute.resilience.header_timeout`)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=http,
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=drain_s,  # type: ignore[arg-type]  # a float works
        lifespan="on",
    )


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with ``SO_REUSEPORT`` (not yet listening): several processes bind the
    same port, and the kernel spreads new connections over those that listen (by a hash of the
    connection's addresses, so one connection stays with one process)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def run_workers(count: int, worker: Callable[[int, int], object], host: str, port: int) -> int:
    """``worker(index, port)`` in ``count`` processes sharing ``host:port`` (``SO_REUSEPORT``);
    returns the highest exit code. Port 0 is resolved here first, so all share the one port (the
    parent keeps that socket bound, never listening, so the port stays theirs). SIGTERM, SIGHUP
    and SIGINT are passed on (SIGINT as SIGTERM: a drain); when one worker exits, the others are
    told to drain too, so the pod restarts whole rather than serving on fewer processes."""
    holder = reuse_port_socket(host, port)
    port = holder.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=worker, args=(i, port), name=f"quantroute-{i}") for i in range(count)]  # fmt: skip

    stopping = False

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        sent = signal.SIGTERM if sig == signal.SIGINT else sig
        if sent == signal.SIGTERM:
            if stopping:  # once: a worker past its drain has its default handler back
                return
            stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, sent)

    originals = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}  # fmt: skip
    try:
        for proc in procs:
            proc.start()
        while any(proc.is_alive() for proc in procs):
            multiprocessing.connection.wait([p.sentinel for p in procs if p.is_alive()])
            if any(p.exitcode is not None for p in procs):
                forward(signal.SIGTERM, None)
                for proc in procs:
                    proc.join()
    finally:
        for sig, original in originals.items():
            signal.signal(sig, original)
        holder.close()
    return max(abs(p.exitcode or 0) for p in procs)
