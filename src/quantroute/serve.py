"""`quantroute serve` and `quantroute check-config`: load the config once, then run or print it."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

import uvicorn

from quantroute.config import load_config
from quantroute.server.app import create_app
from quantroute.state.matrix_source import MatrixSource


def check_config(path: str) -> int:
    config = load_config(path)
    if config.matrix_path is not None:
        MatrixSource(config.matrix_path)
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    note = "capability matrix: " + (
        str(config.matrix_path) if config.matrix_path else "none (live state only)"
    )
    print(f"# {path}: OK, {len(config.backends)} backend(s), {len(config.groups)} group(s); {note}")
    return 0


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host (demo, tests, benchmarks)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(
    app: object, host: str, port: int, log_level: str = "info", drain_s: float = 30.0
) -> uvicorn.Config:
    """uvicorn as the gateway runs it; on shutdown, open streams get ``drain_s`` to finish."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=int(drain_s),
        lifespan="on",
    )


def serve(path: str, *, host: str | None, port: int | None, log_level: str = "info") -> int:
    config = load_config(path)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(config)
    drain_s = config.policy.upstream_timeouts.total_s
    listen_host, listen_port = host or config.listen.host, port or config.listen.port
    server = uvicorn.Server(uvicorn_config(app, listen_host, listen_port, log_level, drain_s))
    server.run()
    return 0
