"""Run the real gateway under uvicorn on 127.0.0.1 in a background thread (tests, benchmarks),
with the production server settings (uvloop, httptools) of :mod:`quantroute.serving`."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI

from quantroute.config import GatewayConfig
from quantroute.serve import metrics_server
from quantroute.server.app import create_app
from quantroute.serving import EmbeddedServer, uvicorn_config

T = TypeVar("T")


class GatewayThread:
    def __init__(
        self, config: GatewayConfig, app: FastAPI | None = None, port: int | None = None
    ) -> None:
        self.app = app or create_app(config)
        # Bound here and handed to uvicorn: no window in which another process takes the port.
        self._socket = socket.create_server(("127.0.0.1", port or 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        http = self.app.state.http_protocol
        cfg = uvicorn_config(self.app, "127.0.0.1", self.port, "warning", drain_s=2, http=http)
        self.server = EmbeddedServer(cfg)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
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

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=self.server.config.get_loop_factory()) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve(sockets=[self._socket])

    def call(self, fn: Callable[[], T], timeout_s: float = 5.0) -> T:
        """Run ``fn`` inside the gateway's event loop (its state is not thread-safe)."""
        assert self.loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout_s)

    def submit(self, work: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        """Await ``work`` inside the gateway's event loop and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout_s)

    def task_names(self) -> list[str]:
        """Names of the tasks alive in the gateway's loop (for leak checks)."""
        return sorted(self.call(lambda: [t.get_name() for t in asyncio.all_tasks()]))

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
