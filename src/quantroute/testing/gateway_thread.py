"""Run the real gateway under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks),
with the production server settings (uvloop, httptools) of :mod:`quantroute.serving`."""

from __future__ import annotations

import threading
import time

from fastapi import FastAPI

from quantroute.config import GatewayConfig
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

    def start(self) -> GatewayThread:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
