"""uvicorn as quantroute runs it, once: the gateway (``serve``), the demo, the simulator and the
test/benchmark harness all build their server here, so tests run the production event loop
(uvloop) and HTTP parser (httptools)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
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
