"""The async scrape loop: GET each backend's /metrics every interval, parse, update the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import httpx

from quantroute.base import Clock
from quantroute.config import BackendConfig, PolicyConfig
from quantroute.state.promtext import parse_metrics
from quantroute.state.store import StateStore

log = logging.getLogger("quantroute.scraper")
ScrapeHook = Callable[[BackendConfig, bool], None]


class Scraper:
    """Polls every backend concurrently; the HTTP client and the clock are injected."""

    def __init__(
        self,
        store: StateStore,
        policy: PolicyConfig,
        client: httpx.AsyncClient,
        *,
        clock: Clock = time.monotonic,
        on_result: ScrapeHook | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._client = client
        self._clock = clock
        self._on_result = on_result
        self._task: asyncio.Task[None] | None = None

    def set_policy(self, policy: PolicyConfig) -> None:
        """A reloaded config's scrape interval and timeout, from the next round on."""
        self._policy = policy

    async def scrape_once(self) -> None:
        await asyncio.gather(
            *(
                asyncio.create_task(self._scrape(b), name=f"quantroute-scrape-{b.id}")
                for b in self._store.configs()
            )
        )

    async def _scrape(self, backend: BackendConfig) -> None:
        started = self._clock()
        url = backend.url.rstrip("/") + "/metrics"
        try:
            response = await self._client.get(url, timeout=self._policy.scrape_timeout_s)
            response.raise_for_status()
            metrics = parse_metrics(response.text)
        except (httpx.HTTPError, ValueError) as exc:
            self._store.record_failure(backend.id, f"{type(exc).__name__}: {exc}"[:300])
            log.debug("scrape of %s failed: %s", backend.id, exc)
            ok = False
        else:
            self._store.record_scrape(backend.id, metrics, started)
            ok = True
        if self._on_result is not None:
            self._on_result(backend, ok)

    async def run(self) -> None:
        while True:
            started = self._clock()
            await self.scrape_once()
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.0, self._policy.scrape_interval_s - elapsed))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="quantroute-scraper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
