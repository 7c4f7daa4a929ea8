"""The real gateway on loopback in front of fake vLLM backends, its spans read in memory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler

from quantroute.config import AccessLogConfig, GatewayConfig, parse_config
from quantroute.observe.access_log import AccessLog
from quantroute.observe.observer import Observer
from quantroute.observe.otel import OtelTracing
from quantroute.server.app import create_app
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

API_KEY = "sk-secret-key-never-in-a-span"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class TracedFleet:
    backends: dict[str, FakeBackend]
    gateway: GatewayThread
    exporter: InMemorySpanExporter
    config: GatewayConfig
    access_log_path: Path | None
    headers_seen: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, **kw: Any) -> openai.OpenAI:
        """An OpenAI client of the gateway, closed when the fleet stops."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=API_KEY, max_retries=0, **kw)
        self.clients.append(client)
        return client

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def wait_spans(self, predicate: Callable[[list[ReadableSpan]], bool]) -> list[ReadableSpan]:
        assert wait_until(lambda: predicate(self.spans()), 5.0), [s.name for s in self.spans()]
        return self.spans()


def _recorder(seen: list[dict[str, str]]) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            seen.append({k.lower(): v for k, v in request.headers.items()})
        return await handler(request)

    return record


FleetFactory = Callable[..., TracedFleet]


@pytest.fixture
def traced_fleet(tmp_path: Path) -> Iterator[FleetFactory]:
    started: list[tuple[TracedFleet, list[ThreadedServer]]] = []

    def factory(
        states: dict[str, FakeState] | None = None,
        *,
        backend_overrides: dict[str, dict[str, Any]] | None = None,
        policy: dict[str, Any] | None = None,
        sampler: Sampler = ALWAYS_ON,
        access_log: bool = False,
        access: dict[str, Any] | None = None,
        resilience: dict[str, Any] | None = None,
    ) -> TracedFleet:
        states = states or {"a": FakeState(served_model_name="a")}
        backends = {k: FakeBackend(s) for k, s in states.items()}
        seen: dict[str, list[dict[str, str]]] = {k: [] for k in states}
        for k, b in backends.items():
            b.app.middlewares.append(_recorder(seen[k]))
        servers = {k: ThreadedServer(b.app).start() for k, b in backends.items()}
        rows = [
            {
                "id": k,
                "url": servers[k].url,
                "served_model_name": s.served_model_name,
                "variant": f"{k}-variant",
                "max_seq_len": s.max_model_len,
                "capacity": 16,
                "gpu_cost_per_hour": 1.0,
                **(backend_overrides or {}).get(k, {}),
            }
            for k, s in states.items()
        ]
        variants = [r["variant"] for r in rows]
        pol = {"scrape_interval_s": 0.1, "staleness_limit_s": 2.0, **(policy or {})}
        data: dict[str, Any] = {
            "backends": rows,
            "groups": [{"name": "auto", "variants": variants}],
            "policy": pol,
        }
        if access is not None:
            data["access"] = access
        if resilience is not None:
            data["resilience"] = resilience
        config = parse_config(data)
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        log_path = tmp_path / f"access-{len(started)}.jsonl" if access_log else None
        log = AccessLog(AccessLogConfig(path=str(log_path))) if log_path else None
        observer = Observer(tracing=OtelTracing(provider), access_log=log)
        gateway = GatewayThread(config, app=create_app(config, observer=observer)).start()
        fleet = TracedFleet(backends, gateway, exporter, config, log_path, seen)
        started.append((fleet, list(servers.values())))
        assert wait_until(lambda: _all_fresh(fleet), 5.0)
        return fleet

    yield factory
    for fleet, servers in started:
        for client in fleet.clients:
            client.close()
        fleet.gateway.stop()
        for server in servers:
            server.stop()


def _all_fresh(fleet: TracedFleet) -> bool:
    import httpx

    auth = {"Authorization": f"Bearer {API_KEY}"}  # an admin key where keys are configured
    rows = httpx.get(fleet.url + "/admin/backends", headers=auth).json()["backends"]
    return all(r["state"] == "fresh" for r in rows)


def continuing_fleet(
    traced_fleet: FleetFactory, b: FakeState | None = None, **extra: Any
) -> TracedFleet:
    """Two replicas of one variant, access log on: ``a`` (the cheaper, so the first pick)
    breaks its stream after three chunks and ``b`` (default: a healthy one) continues it."""
    return traced_fleet(
        {
            "a": FakeState(served_model_name="m", die_after_chunks=3),
            "b": b or FakeState(served_model_name="m"),
        },
        backend_overrides={"a": {"variant": "v"}, "b": {"variant": "v", "gpu_cost_per_hour": 50.0}},
        policy={"tie_tolerance": 0.0},
        access_log=True,
        **extra,
    )
