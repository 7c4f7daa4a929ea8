"""A small fleet of fake vLLM-like backends and the real gateway in front of them, on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from quantroute.config import GatewayConfig, parse_config
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread


@dataclass
class Fleet:
    backends: dict[str, FakeBackend]
    servers: dict[str, ThreadedServer]
    gateway: GatewayThread
    config: GatewayConfig
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, **kw: Any) -> openai.OpenAI:
        """An OpenAI client of the gateway, closed when the fleet stops."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="test", max_retries=0, **kw)
        self.clients.append(client)
        return client

    def admin(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(self.url + "/admin/backends").json()["backends"]
        return {row["id"]: row for row in rows}

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(httpx.get(self.url + "/metrics").text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def picks(self, n: int, **body: Any) -> set[str]:
        """The backends ``n`` sequential non-stream requests were routed to."""
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
            **body,
        }
        create = self.client().chat.completions.with_raw_response.create
        return {create(**body).headers["x-quantroute-backend"] for _ in range(n)}

    def wait_fresh(self, timeout_s: float = 5.0) -> None:
        assert wait_until(
            lambda: all(r["state"] == "fresh" for r in self.admin().values()), timeout_s
        )


FleetFactory = Callable[..., Fleet]


@pytest.fixture
def make_fleet() -> Iterator[FleetFactory]:
    started: list[Fleet] = []

    def factory(
        states: dict[str, FakeState] | None = None,
        *,
        policy: dict[str, Any] | None = None,
        backend_overrides: dict[str, dict[str, Any]] | None = None,
        extra_backends: list[dict[str, Any]] | None = None,
        groups: list[dict[str, Any]] | None = None,
        resilience: dict[str, Any] | None = None,
        wait: bool = True,
        matrix_path: str | None = None,
    ) -> Fleet:
        states = states or {
            "a": FakeState(served_model_name="model-a"),
            "b": FakeState(served_model_name="model-b"),
        }
        backends = {k: FakeBackend(s) for k, s in states.items()}
        servers = {k: ThreadedServer(b.app).start() for k, b in backends.items()}
        rows = [
            {
                "id": k,
                "url": servers[k].url,
                "served_model_name": s.served_model_name,
                "max_seq_len": s.max_model_len,
                "capacity": 16,
                "gpu": "L40S",
                "gpu_cost_per_hour": 1.0,
                **(backend_overrides or {}).get(k, {}),
            }
            for k, s in states.items()
        ] + (extra_backends or [])
        groups = groups or [{"name": "auto", "variants": [r["id"] for r in rows]}]
        pol = {"scrape_interval_s": 0.1, "staleness_limit_s": 2.0, **(policy or {})}
        config = parse_config(
            {
                "backends": rows,
                "groups": groups,
                "policy": pol,
                "resilience": resilience or {},
                "matrix_path": matrix_path,
            }
        )
        gateway = GatewayThread(config).start()
        fleet = Fleet(backends, servers, gateway, config)
        started.append(fleet)
        if wait:
            fleet.wait_fresh()
        return fleet

    yield factory
    for fleet in started:
        for client in fleet.clients:
            client.close()
        fleet.gateway.stop()
        for server in fleet.servers.values():
            server.stop()
