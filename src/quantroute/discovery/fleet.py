"""One backend list from every source: static backends, strict DNS, the Kubernetes API.

``await start_discovery(config, apply)`` starts the sources the config names and calls ``apply``
with the whole list whenever it changes: the static backends that DNS does not resolve, then the
DNS-resolved ones, then the discovered pods (an id already taken keeps its first backend).
The DNS templates themselves are never backends: after the first round they are replaced by
what they resolved to, nothing when their name resolved to nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

from quantroute.config import BackendConfig, GatewayConfig

Apply = Callable[[list[BackendConfig]], None]


class Closable(Protocol):
    async def aclose(self) -> None: ...


class Fleet:
    """The merged view; ``aclose()`` stops every source."""

    def __init__(self, config: GatewayConfig, apply: Apply) -> None:
        from quantroute.discovery.strict_dns import templates

        self._templates = templates(config)
        resolved = {t.id for t in self._templates}
        self._static = [b for b in config.backends if b.id not in resolved]
        self._apply = apply
        self._dns: list[BackendConfig] = []
        self._pods: list[BackendConfig] = []
        self._published: list[BackendConfig] | None = None
        self._sources: list[Closable] = []

    def on_dns(self, backends: list[BackendConfig]) -> None:
        self._dns = backends
        self.publish()

    def on_pods(self, backends: list[BackendConfig]) -> None:
        self._pods = backends
        self.publish()

    def publish(self) -> None:
        merged: dict[str, BackendConfig] = {}
        for backend in [*self._static, *self._dns, *self._pods]:
            merged.setdefault(backend.id, backend)
        backends = list(merged.values())
        if backends != self._published:
            self._apply(backends)
            self._published = backends

    async def start(self, config: GatewayConfig) -> None:
        discovery = config.discovery
        if discovery is None:
            return
        try:
            if discovery.dns is not None:
                from quantroute.discovery.strict_dns import start_dns_discovery

                dns = await start_dns_discovery(discovery.dns, self._templates, self.on_dns)
                self._sources.append(dns)
            if discovery.kubernetes is not None:
                from quantroute.discovery import start_kubernetes_discovery

                pods = await start_kubernetes_discovery(discovery.kubernetes, self.on_pods)
                self._sources.append(pods)
        except BaseException:
            await self.aclose()
            raise
        self.publish()

    async def aclose(self) -> None:
        for source in reversed(self._sources):
            with contextlib.suppress(Exception):
                await source.aclose()
        self._sources.clear()


async def start_discovery(config: GatewayConfig, apply: Apply) -> Fleet:
    fleet = Fleet(config, apply)
    await fleet.start(config)
    return fleet
