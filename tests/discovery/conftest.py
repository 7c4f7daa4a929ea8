"""The fake Kubernetes API on loopback and discovery (the real kubernetes_asyncio client) against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from quantroute.config import BackendConfig, KubernetesDiscoveryConfig
from quantroute.discovery import Backoff, KubernetesDiscovery, start_kubernetes_discovery
from quantroute.testing.fake_backend import ThreadedServer, async_wait_until

from .fake_kube import FakeKube

FAST = Backoff(initial_s=0.05, max_s=0.2)


class Recorder:
    """What on_change received, call by call."""

    def __init__(self) -> None:
        self.calls: list[list[BackendConfig]] = []

    def __call__(self, backends: list[BackendConfig]) -> None:
        self.calls.append(backends)

    @property
    def current(self) -> dict[str, BackendConfig]:
        return {b.id: b for b in self.calls[-1]} if self.calls else {}

    async def wait_ids(self, *ids: str, timeout_s: float = 5.0) -> dict[str, BackendConfig]:
        assert await async_wait_until(lambda: set(self.current) == set(ids), timeout_s), (
            f"wanted {sorted(ids)}, have {sorted(self.current)} after {len(self.calls)} call(s)"
        )
        return self.current


class Discovered:
    def __init__(self, kube: FakeKube, server: ThreadedServer) -> None:
        self.kube = kube
        self.server = server
        self.recorder = Recorder()
        self.handle: KubernetesDiscovery | None = None

    def config(self, **overrides: Any) -> KubernetesDiscoveryConfig:
        return KubernetesDiscoveryConfig(api_url=self.server.url, **overrides)

    async def start(self, **overrides: Any) -> Recorder:
        self.handle = await start_kubernetes_discovery(
            self.config(**overrides), self.recorder, backoff=FAST
        )
        return self.recorder


@pytest.fixture
def kube() -> Iterator[tuple[FakeKube, ThreadedServer]]:
    fake = FakeKube()
    server = ThreadedServer(fake.app).start()
    try:
        yield fake, server
    finally:
        fake.drop_watches()
        server.stop()


@pytest.fixture
async def discovered(kube: tuple[FakeKube, ThreadedServer]) -> AsyncIterator[Discovered]:
    found = Discovered(*kube)
    try:
        yield found
    finally:
        if found.handle is not None:
            await found.handle.aclose()
