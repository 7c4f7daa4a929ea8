"""Strict DNS discovery: every address a backend's host name resolves to is one backend.

Like Envoy's ``STRICT_DNS`` clusters, for the headless Service in front of a variant's vLLM pods
(one A record per Ready pod)::

    every interval_s, for each template backend (a static backend whose URL host is a name):
        resolve the host (A or AAAA, search list of /etc/resolv.conf, dnspython's async resolver)
        ├── addresses     → one backend per address: the template's settings, id
        │                   ``<template id>-<address>``, url with the address as host
        ├── none          → NXDOMAIN or no record of the type: the template has no backend now
        └── failure       → timeout, SERVFAIL, unreachable resolver: keep the addresses it had
                            (logged once until it resolves again)

``on_change`` gets the whole sorted list of backends, and only when it differs from the last.
Resolution never happens on a request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

import dns.asyncresolver
import dns.exception
import dns.resolver

from quantroute.config import BackendConfig, DnsDiscoveryConfig, GatewayConfig
from quantroute.errors import ConfigError

log = logging.getLogger("quantroute.discovery")
OnChange = Callable[[list[BackendConfig]], None]


def host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def templates(config: GatewayConfig) -> list[BackendConfig]:
    """The static backends that DNS discovery resolves (none without ``discovery.dns``)."""
    dns_cfg = config.discovery.dns if config.discovery is not None else None
    if dns_cfg is None:
        return []
    if dns_cfg.backends is not None:
        return [b for b in config.backends if b.id in dns_cfg.backends]
    return [b for b in config.backends if not _is_address(host_of(b.url))]


def expand(template: BackendConfig, addresses: Iterable[str]) -> list[BackendConfig]:
    """Pure: one backend per address, with the template's settings."""
    parts = urlsplit(template.url)
    port = f":{parts.port}" if parts.port is not None else ""
    out = []
    for address in sorted(set(addresses)):
        host = f"[{address}]" if ":" in address else address
        url = urlunsplit(parts._replace(netloc=host + port))
        backend_id = f"{template.id}-{address.replace(':', '-')}"
        # The variant stays the template's (which defaults to its id): groups and the matrix
        # name variants, and every replica of one is the same variant.
        update = {"id": backend_id, "url": url, "variant": template.variant_id}
        out.append(template.model_copy(update=update))
    return out


def make_resolver(cfg: DnsDiscoveryConfig) -> dns.asyncresolver.Resolver:
    """The configured nameservers, else the system's resolver (with its search list)."""
    try:
        resolver = dns.asyncresolver.Resolver(configure=not cfg.nameservers)
    except dns.resolver.NoResolverConfiguration as exc:
        raise ConfigError(
            f"discovery.dns: no system resolver configuration ({exc}); set discovery.dns.nameservers"
        ) from None
    if cfg.nameservers:
        resolver.nameservers = list(cfg.nameservers)
        resolver.port = cfg.port
    resolver.timeout = cfg.timeout_s
    resolver.lifetime = cfg.timeout_s
    resolver.cache = None
    return resolver


class DnsDiscovery:
    """Keeps each template's current addresses as backends; ``aclose()`` stops it."""

    def __init__(
        self,
        cfg: DnsDiscoveryConfig,
        backends: Sequence[BackendConfig],
        on_change: OnChange,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self._cfg = cfg
        self._templates = list(backends)
        self._on_change = on_change
        self._resolver = resolver or make_resolver(cfg)
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._failing: dict[str, str] = {}
        self._published: tuple[BackendConfig, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def backends(self) -> list[BackendConfig]:
        return list(self._published or ())

    async def resolve_all(self) -> None:
        """One round: resolve every template at once, then publish if anything changed."""
        await asyncio.gather(*(self._resolve(t) for t in self._templates))
        self._publish()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="quantroute-dns-discovery")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.interval_s)
            try:
                await self.resolve_all()
            except Exception:  # never let one bad round end discovery
                log.exception("discovery dns: resolving failed")

    async def _resolve(self, template: BackendConfig) -> None:
        host = host_of(template.url)
        try:
            answer = await self._resolver.resolve(
                host, self._cfg.record_type, search=True, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            found: tuple[str, ...] = ()
        except dns.exception.DNSException as exc:
            self._failed(template, host, exc)
            return
        else:
            rrset = answer.rrset
            found = tuple(sorted({r.to_text() for r in rrset})) if rrset is not None else ()
        if self._failing.pop(template.id, None) is not None:
            log.info("discovery dns: %s resolves again (%d address(es))", host, len(found))
        if not found and self._addresses.get(template.id) != ():
            log.warning("discovery dns: %s (backend %s) has no address", host, template.id)
        self._addresses[template.id] = found

    def _failed(self, template: BackendConfig, host: str, exc: Exception) -> None:
        kind = type(exc).__name__  # the message varies (timings): warn once per kind
        if self._failing.get(template.id) != kind:
            self._failing[template.id] = kind
            kept = len(self._addresses.get(template.id, ()))
            log.warning(
                "discovery dns: resolving %s (backend %s) failed, keeping %d address(es): %s",
                host,
                template.id,
                kept,
                f"{kind}: {exc}",
            )

    def _publish(self) -> None:
        found = [
            backend
            for template in self._templates
            for backend in expand(template, self._addresses.get(template.id, ()))
        ]
        backends = tuple(sorted(found, key=lambda b: b.id))
        if backends == self._published:
            return
        self._on_change(list(backends))
        self._published = backends


async def start_dns_discovery(
    cfg: DnsDiscoveryConfig,
    backends: Sequence[BackendConfig],
    on_change: OnChange,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> DnsDiscovery:
    """Resolve every template once (bounded by ``timeout_s``), publish, then keep resolving."""
    discovery = DnsDiscovery(cfg, backends, on_change, resolver)
    await discovery.resolve_all()
    discovery.start()
    return discovery
