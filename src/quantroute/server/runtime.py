"""The running config and the gateway built from it; swapped whole on reload or discovery.

A request takes the :class:`~quantroute.server.gateway.Gateway` current when it arrives and keeps
it to the end, so requests in progress finish on the config they started with. What outlives a
config is shared: the state store (scraped state, in-flight account, passive health), the retry
budget, the upstream session, access control (keys, quotas; the keys file has its own watcher),
the prefix index and the telemetry. Series of backends that leave are removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from quantroute.access.control import AccessControl
from quantroute.base import Clock
from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.plugins import compile_plan
from quantroute.flow.control import FlowControl
from quantroute.observe.observer import Observer
from quantroute.proxy.upstream import Upstream
from quantroute.resilience.budget import RetryBudget
from quantroute.server.gateway import Gateway
from quantroute.state.matrix_source import MatrixSource
from quantroute.state.prefix import PrefixTracker
from quantroute.state.scraper import Scraper
from quantroute.state.store import StateStore
from quantroute.telemetry import Telemetry

log = logging.getLogger("quantroute.server")

NEEDS_RESTART: tuple[tuple[str, Callable[[GatewayConfig], object]], ...] = (
    ("listen", lambda c: c.listen),
    ("discovery", lambda c: c.discovery),
    (
        "resilience.upstream.connections_per_backend",
        lambda c: c.resilience.upstream.connections_per_backend,
    ),
    ("resilience.drain", lambda c: c.resilience.drain),
    ("access", lambda c: c.access),
    ("tracing", lambda c: c.tracing),
    ("access_log", lambda c: c.access_log),
    ("policy.prefix", lambda c: c.policy.prefix),
    ("the prefix index (a scorer that reads it)", lambda c: compile_plan(c.policy).tracks_prefix),
)


class Runtime:
    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore,
        upstream: Upstream,
        matrix: MatrixSource,
        telemetry: Telemetry,
        clock: Clock,
        access: AccessControl,
        prefix: PrefixTracker | None = None,
        *,
        observer: Observer | None = None,
        on_swap: Callable[[Gateway], None] = lambda _: None,
    ) -> None:
        self.config = config
        self.observer = observer or Observer()
        self.access = access
        self.prefix = prefix
        self.store = store
        self.upstream = upstream
        self.matrix = matrix
        self.telemetry = telemetry
        self.clock = clock
        self.budget = RetryBudget(config.resilience.retry_budget)
        self.discovered: list[BackendConfig] | None = None
        """The whole backend list discovery last published (static ones included); None
        without discovery."""
        self.retired: set[str] = set()
        """Backends that left while requests to them were in flight: their series go when the
        last of those ends (a request finishing later would otherwise create them again)."""
        self._on_swap = on_swap
        self.scraper: Scraper | None = None
        self.flow = FlowControl(config.policy.flow_control, store.snapshot, telemetry.flow, clock)
        """The flow-control queue: one for the process, kept across reloads."""
        store.subscribe(self.flow.pump)
        self.gateway = self._build(config)
        self._declare(config, set())
        on_swap(self.gateway)

    def backends(self) -> list[BackendConfig]:
        """The config's backends, or discovery's whole list once it has published one."""
        return list(self.config.backends if self.discovered is None else self.discovered)

    def _build(self, config: GatewayConfig) -> Gateway:
        gateway = Gateway(
            config,
            self.store,
            self.upstream,
            self.matrix,
            self.telemetry,
            self.prefix,
            access=self.access,
            budget=self.budget,
            clock=self.clock,
            backends=self.backends(),
            observer=self.observer,
            flow=self.flow,
        )
        gateway.set_backends(self.backends())
        return gateway

    def _declare(self, config: GatewayConfig, before: set[str]) -> list[str]:
        now = {b.id: b for b in self.backends()}
        for backend in now.values():
            self.telemetry.declare_backend(backend.id, backend.gpu_cost_per_hour)
            if self.prefix is not None:
                self.telemetry.declare_prefix(backend.id)
        for group in config.groups:
            self.telemetry.declare_group(group.name)
        removed = sorted(before - set(now))
        self.retired = (self.retired | set(removed)) - set(now)
        self.sweep()
        notes = []
        if added := sorted(set(now) - before):
            notes.append(f"backends added: {', '.join(added)}")
        if removed:
            notes.append(f"backends removed: {', '.join(removed)}")
        return notes

    def sweep(self) -> None:
        """Remove the series of retired backends that have nothing in flight any more."""
        inflight = self.store.inflight
        for backend_id in sorted(b for b in self.retired if inflight.count(b) == 0):
            self.telemetry.forget_backend(backend_id)
            inflight.forget(backend_id)
            self.retired.discard(backend_id)

    def apply(self, config: GatewayConfig) -> list[str]:
        """Swap in a validated config for new requests; returns notes for the log."""
        old = self.config
        notes = [
            f"{name} changed: takes effect after a restart"
            for name, read in NEEDS_RESTART
            if read(old) != read(config)
        ]
        if self.discovered is not None and config.backends != old.backends:
            notes.append("backends changed: with discovery on, takes effect after a restart")
        before = {b.id for b in self.backends()}
        if config.matrix_path != old.matrix_path:
            self.matrix = MatrixSource(config.matrix_path)
            notes.append(f"capability matrix: {config.matrix_path or 'none'}")
        self.config = config
        self.store.set_policy(config.policy)
        if self.scraper is not None:
            self.scraper.set_policy(config.policy)
        self.budget.configure(config.resilience.retry_budget)
        self.flow.configure(config.policy.flow_control)
        previous = self.gateway.router
        sequence = previous.next_sequence(dry_run=True)
        self.gateway = self._build(config)
        self.gateway.router.continue_from(sequence)
        if config.decision_log == old.decision_log:  # one writer per file, kept across reloads
            self.gateway.router.decision_log = previous.decision_log
        notes += self._declare(config, before)
        self._on_swap(self.gateway)
        return notes

    def on_discovery(self, discovered: list[BackendConfig]) -> None:
        """Discovery's whole backend list (static, DNS and pods), whenever it changes."""
        before = {b.id for b in self.backends()}
        self.discovered = discovered
        backends = self.backends()
        self.gateway.set_backends(backends)
        self._declare(self.config, before)
        log.info("discovery: %d backend(s): %s", len(backends), ", ".join(b.id for b in backends))
