"""Kubernetes discovery: list the selected pods, watch them, hand the gateway the serving set.

The loop, each step bounded::

    list ──► watch from the list's resourceVersion ──► stream ends ──► watch again from the
     ▲        last version seen (at once; after backoff when streams keep ending empty and early)
     │
     ├── every ``resync_s``: list again (repairs anything a watch missed)
     ├── 410 Gone (version too old): list again at once (backoff if it repeats)
     └── any other error: list again after 0.5 s, doubling to 30 s while nothing gets through

``on_change`` gets the whole sorted backend list, and only when that list differs from the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from quantroute.config import BackendConfig, KubernetesDiscoveryConfig
from quantroute.discovery._kube import PodEvent, PodList, own_namespace
from quantroute.discovery.pods import PodView, pod_name, read_pod
from quantroute.discovery.scope import outside, parse_selector
from quantroute.errors import KubeApiError, ResourceExpired

log = logging.getLogger("quantroute.discovery")
OnChange = Callable[[list[BackendConfig]], None]


class PodSource(Protocol):
    async def list_pods(self) -> PodList: ...

    def watch_pods(
        self, resource_version: str, timeout_s: float
    ) -> AsyncGenerator[PodEvent, None]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0

    def delay(self, failures: int) -> float:
        """0 for no failure, then initial_s, doubling up to max_s."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 32))


class KubernetesDiscovery:
    """Keeps the serving pods of one selector as backends; ``aclose()`` stops it."""

    def __init__(
        self,
        cfg: KubernetesDiscoveryConfig,
        source: PodSource,
        on_change: OnChange,
        backoff: Backoff | None = None,
    ) -> None:
        self._cfg = cfg
        self._namespace = cfg.namespace or own_namespace()  # where the source lists pods
        self._in_scope = parse_selector(cfg.label_selector)
        self._strangers: set[tuple[str, str]] = set()
        self._source = source
        self._on_change = on_change
        self._backoff = backoff or Backoff()
        self._pods: dict[str, PodView] = {}
        self._warned: dict[str, str] = {}
        self._published: tuple[BackendConfig, ...] | None = None
        self._progressed = False
        self._attempted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def backends(self) -> list[BackendConfig]:
        return list(self._published or ())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="quantroute-discovery")

    async def wait_first_attempt(self, timeout_s: float) -> bool:
        """Wait (bounded) until the first list succeeded or failed; True when it did either."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._attempted.wait()
        return self._attempted.is_set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._source.aclose()

    # -- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while True:
            self._progressed = False
            try:
                await self._watch(await self._relist())
            except Exception as exc:
                failures = 1 if self._progressed else failures + 1
                expired = isinstance(exc, ResourceExpired)
                delay = self._backoff.delay(failures - 1 if expired else failures)
                self._log_failure(exc, delay)
                self._attempted.set()
                await asyncio.sleep(delay)
            else:
                failures = 0

    def _log_failure(self, exc: Exception, delay: float) -> None:
        where = f"{self._cfg.namespace}/{self._cfg.label_selector}"
        if isinstance(exc, ResourceExpired):
            log.info("discovery %s: watch expired (410), listing again in %.1f s", where, delay)
        elif isinstance(exc, KubeApiError | OSError):
            log.warning("discovery %s: %s; listing again in %.1f s", where, exc, delay)
        else:
            log.warning(
                "discovery %s: %r; listing again in %.1f s", where, exc, delay, exc_info=exc
            )

    async def _relist(self) -> str:
        listing = await self._source.list_pods()
        self._pods = {}
        for pod in listing.items:
            if self._outside(pod):
                continue
            view = self._note(read_pod(pod, self._cfg))
            self._pods[view.name] = view
        self._warned = {k: v for k, v in self._warned.items() if k in self._pods}
        self._attempted.set()
        self._publish()
        return listing.resource_version

    async def _watch(self, resource_version: str) -> None:
        """Follow the watch, resuming from the last version seen, until the resync is due."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cfg.resync_s
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                drops = 0
                while True:
                    started = loop.time()
                    resource_version, events = await self._stream(
                        resource_version, deadline - started
                    )
                    early = loop.time() - started < (deadline - started) / 2
                    self._progressed = self._progressed or not early
                    drops = drops + 1 if events == 0 and early else 0
                    await asyncio.sleep(self._backoff.delay(drops - 1))
        except TimeoutError:
            if not timeout.expired():
                raise

    async def _stream(self, resource_version: str, timeout_s: float) -> tuple[str, int]:
        count = 0
        events = self._source.watch_pods(resource_version, timeout_s)
        async with contextlib.aclosing(events):
            async for event in events:
                resource_version = event.resource_version or resource_version
                count += 1
                self._progressed = True
                self._apply(event)
        return resource_version, count

    # -- state -----------------------------------------------------------------------------------
    def _apply(self, event: PodEvent) -> None:
        if event.type == "BOOKMARK" or self._outside(event.pod):
            return
        name = pod_name(event.pod)
        if event.type == "DELETED":
            self._pods.pop(name, None)
            self._warned.pop(name, None)
        else:
            self._pods[name] = self._note(read_pod(event.pod, self._cfg))
        self._publish()

    def _outside(self, pod: Mapping[str, object]) -> bool:
        """A pod the API should not have returned (another namespace, labels that do not match):
        never a backend, whatever it claims (docs/discovery.md, "Trust")."""
        metadata = pod.get("metadata")
        why = outside(
            metadata if isinstance(metadata, Mapping) else {}, self._namespace, self._in_scope
        )
        if why is None:
            return False
        where = (
            str(metadata.get("namespace")) if isinstance(metadata, Mapping) else "?",
            pod_name(pod),
        )
        if where not in self._strangers:
            self._strangers.add(where)
            log.warning("discovery: ignoring pod %s/%s outside the scope: %s", *where, why)
        return True

    def _note(self, view: PodView) -> PodView:
        """Warn once per pod and problem (not on every event or resync)."""
        if view.problem is None:
            self._warned.pop(view.name, None)
        elif self._warned.get(view.name) != view.problem:
            self._warned[view.name] = view.problem
            log.warning(
                "discovery: skipping pod %s/%s: %s", self._cfg.namespace, view.name, view.problem
            )
        return view

    def _publish(self) -> None:
        serving = [v.backend for v in self._pods.values() if v.serving and v.backend is not None]
        backends = tuple(sorted(serving, key=lambda b: b.id))
        if backends == self._published:
            return
        try:
            self._on_change(list(backends))
        except Exception:
            log.exception("discovery: applying %d backend(s) failed", len(backends))
            return
        self._published = backends
