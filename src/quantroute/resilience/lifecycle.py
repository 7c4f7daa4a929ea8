"""The process's lifecycle: serving, draining; SIGTERM drains, SIGHUP reloads the config.

On SIGTERM the gateway turns ``/ready`` 503 at once and keeps serving (new connections too) for
``drain.announce_s``, so the load balancer takes the pod out before it stops listening; then it
stops accepting connections and gives the requests in progress ``drain.deadline_s`` to finish
(uvicorn's graceful shutdown), and exits with status 0. A second SIGTERM skips the announcement;
SIGINT (Ctrl-C) stops at once as uvicorn does. SIGHUP asks for a config reload.

uvicorn re-raises a captured signal after its own shutdown (so the default handler would end
the process with 143); this server handles its signals itself and never does.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

log = logging.getLogger("quantroute.lifecycle")


class Lifecycle:
    """Shared between the server (which drains) and ``/ready`` (which reports it)."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_started: float | None = None
        self._listeners: list[Callable[[], None]] = []

    def on_drain(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def start_drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.drain_started = time.monotonic()
        for listener in self._listeners:
            listener()


class GatewayServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        *,
        announce_s: float = 0.0,
        on_reload: Callable[[], None] | None = None,
        handle_signals: bool = True,
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.announce_s = announce_s
        self.on_reload = on_reload
        self.handle_signals = handle_signals
        self._exit_at: float | None = None
        self._reload_requested = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {
            signal.SIGTERM: self._on_term,
            signal.SIGINT: self._on_int,
            signal.SIGHUP: self._on_hup,
        }
        originals = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield
        finally:
            for sig, original in originals.items():
                signal.signal(sig, original)

    def drain(self, announce_s: float | None = None) -> None:
        """Start draining: /ready 503 now, stop listening after the announcement."""
        wait = self.announce_s if announce_s is None else announce_s
        if self.lifecycle.draining:
            self.should_exit = True  # asked again: skip what is left of the announcement
            return
        log.warning("draining: /ready is 503; listening for %.1f s more, then finishing", wait)
        self.lifecycle.start_drain()
        self._exit_at = time.monotonic() + wait

    def _on_term(self, sig: int, frame: FrameType | None) -> None:
        self.drain()

    def _on_int(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.start_drain()
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    def _on_hup(self, sig: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    async def on_tick(self, counter: int) -> bool:
        if self._reload_requested:
            self._reload_requested = False
            if self.on_reload is not None:
                self.on_reload()
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)
