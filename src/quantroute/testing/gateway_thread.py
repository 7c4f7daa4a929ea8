"""Run the real gateway under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks),
with the production server settings (uvloop, httptools) of :mod:`quantroute.serving`."""

from __future__ import annotations

import socket
import threading
import time

from fastapi import FastAPI

from quantroute.config import GatewayConfig
from quantroute.serve import metrics_server
from quantroute.server.app import create_app
from quantroute.serving import EmbeddedServer, uvicorn_config


class GatewayThread:
    def __init__(
        self, config: GatewayConfig, app: FastAPI | None = None, port: int | None = None
    ) -> None:
        self.app = app or create_app(config)
        # Bound here and handed to uvicorn: no window in which another process takes the port.
        self._socket = socket.create_server(("127.0.0.1", port or 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn_config(self.app, "127.0.0.1", self.port, "warning", drain_s=2)
        self.server = EmbeddedServer(cfg)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        # access.metrics_port: /metrics on a port of its own, as `quantroute serve` does (here a
        # socket bound now, like the API port's)
        self.metrics_port: int | None = None
        self._metrics: tuple[EmbeddedServer, threading.Thread] | None = None
        self._metrics_socket: socket.socket | None = None
        if config.access.metrics_port is not None:
            self._metrics_socket = socket.create_server(("127.0.0.1", 0))
            self.metrics_port = self._metrics_socket.getsockname()[1]
            registry = self.app.state.telemetry.registry
            server = metrics_server(registry, "127.0.0.1", self.metrics_port)
            thread = threading.Thread(
                target=server.run, kwargs={"sockets": [self._metrics_socket]}, daemon=True
            )
            self._metrics = (server, thread)

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
        self._socket.close()
        if self._metrics_socket is not None:
            self._metrics_socket.close()

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
