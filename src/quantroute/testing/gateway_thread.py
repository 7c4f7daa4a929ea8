"""Run the real gateway under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks),
with the production server settings (uvloop, httptools) of :mod:`quantroute.serving`."""

from __future__ import annotations

import threading
import time

from fastapi import FastAPI

from quantroute.config import GatewayConfig
from quantroute.serve import metrics_server
from quantroute.server.app import create_app
from quantroute.serving import EmbeddedServer, uvicorn_config
from quantroute.testing.procs import free_port


class GatewayThread:
    def __init__(
        self, config: GatewayConfig, app: FastAPI | None = None, port: int | None = None
    ) -> None:
        self.app = app or create_app(config)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn_config(self.app, "127.0.0.1", self.port, "warning", drain_s=2)
        self.server = EmbeddedServer(cfg)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        # access.metrics_port: /metrics on a port of its own, as `quantroute serve` does (here a
        # free one, like the API port)
        self.metrics_port: int | None = None
        self._metrics: tuple[EmbeddedServer, threading.Thread] | None = None
        if config.access.metrics_port is not None:
            self.metrics_port = free_port()
            registry = self.app.state.telemetry.registry
            server = metrics_server(registry, "127.0.0.1", self.metrics_port)
            self._metrics = (server, threading.Thread(target=server.run, daemon=True))

    def start(self) -> GatewayThread:
        servers = [(self.server, self._thread)] + ([self._metrics] if self._metrics else [])
        for server, thread in servers:
            thread.start()
            deadline = time.monotonic() + 15
            while not server.started:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError("gateway did not start")
                time.sleep(0.01)
        return self

    def stop(self) -> None:
        servers = [(self.server, self._thread)] + ([self._metrics] if self._metrics else [])
        for server, _ in servers:
            server.should_exit = True
        for _, thread in servers:
            thread.join(15)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
