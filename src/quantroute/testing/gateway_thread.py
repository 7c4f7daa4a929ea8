"""Run the real gateway under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from fastapi import FastAPI

from quantroute.config import GatewayConfig
from quantroute.server.app import create_app
from quantroute.testing.fake_backend import free_port


class GatewayThread:
    def __init__(
        self, config: GatewayConfig, app: FastAPI | None = None, port: int | None = None
    ) -> None:
        self.app = app or create_app(config)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            loop="asyncio",
            http="httptools",
            access_log=False,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(cfg)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve()), daemon=True
        )

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
