"""Fault-injection scenarios: the real gateway over loopback in front of misbehaving backends.

``make_fleet`` starts the gateway (uvicorn, in a thread) in front of any mix of
:class:`~quantroute.testing.fake_backend.FakeBackend` servers and
:class:`~quantroute.testing.faults.RawServer` misbehavers. ``Fleet.assert_no_leaks`` is called
after every scenario: in-flight gauges and accounts at 0, no upstream connection held to a raw
server (they close after every answer, so any held socket is a leak), no backend request still
running, and no task left in the gateway's loop beyond those it had when it started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantroute.config import GatewayConfig, parse_config
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.faults import RawServer
from quantroute.testing.gateway_thread import GatewayThread
from quantroute.testing.leaks import held_connections

MSG = [{"role": "user", "content": "hi"}]
Backend = FakeState | RawServer


@dataclass
class Fleet:
    gateway: GatewayThread
    config: GatewayConfig
    fakes: dict[str, FakeBackend] = field(default_factory=dict)
    servers: dict[str, ThreadedServer] = field(default_factory=dict)
    raws: dict[str, RawServer] = field(default_factory=dict)
    baseline_tasks: int = 0

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="t", max_retries=0, **kw)

    def post(self, body: dict[str, Any], **kw: Any) -> httpx.Response:
        full = {"model": "auto", "messages": MSG, "max_tokens": 4, **body}
        return httpx.post(self.url + "/v1/chat/completions", json=full, timeout=30, **kw)

    def admin(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(self.url + "/admin/backends", timeout=10).json()["backends"]
        return {row["id"]: row for row in rows}

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        text = httpx.get(self.url + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def series(self, name: str) -> list[dict[str, str]]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return [
            dict(s.labels)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        ]

    def upstream_calls(self, backend_id: str) -> int:
        if backend_id in self.fakes:
            return len(self.fakes[backend_id].state.received)
        return sum(
            n for path, n in self.raws[backend_id].stats.requests.items() if path != "/metrics"
        )

    # -- leaks ---------------------------------------------------------------------------------
    def leaks(self) -> dict[str, object]:
        """Everything that should be zero (or back at its start) between scenarios."""
        in_flight = {k: v["in_flight"]["requests"] for k, v in self.admin().items()}
        return {
            "in_flight_gauge": self.metric("quantroute_in_flight_requests"),
            "backend_in_flight_gauges": self.metric("quantroute_backend_in_flight_requests"),
            "in_flight_accounts": sum(in_flight.values()),
            "raw_upstream_sockets": held_connections({s.port for s in self.raws.values()}),
            "raw_server_connections": sum(s.stats.open for s in self.raws.values()),
            "fake_backend_active": sum(f.state.active for f in self.fakes.values()),
            "extra_tasks": request_task_count(self.gateway) - self.baseline_tasks,
        }

    def assert_no_leaks(self, timeout_s: float = 10.0) -> None:
        clean = dict.fromkeys(self.leaks(), 0)
        ok = wait_until(lambda: self.leaks() == clean, timeout_s, 0.1)
        assert ok, f"leaks: {self.leaks()}; tasks now: {self.gateway.task_names()}"


FleetFactory = Callable[..., Fleet]


PERIODIC = ("quantroute-scrape-", "anyio.")
"""Tasks of a scrape round (and the connect attempts of its HTTP client): they come and go
every scrape interval whatever the requests do, so they are not counted."""


def request_task_count(gateway: GatewayThread) -> int:
    return sum(1 for name in gateway.task_names() if not name.startswith(PERIODIC))


def settled_task_count(gateway: GatewayThread, timeout_s: float = 5.0) -> int:
    """The gateway loop's task count once it holds still (requests of the set-up finished)."""
    counts = [request_task_count(gateway)]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (len(counts) < 3 or len(set(counts[-3:])) > 1):
        time.sleep(0.1)
        counts.append(request_task_count(gateway))
    return min(counts[-3:])


def backend_row(backend_id: str, url: str, served: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": backend_id,
        "url": url,
        "served_model_name": served,
        "variant": "v",
        "max_seq_len": 8192,
        "capacity": 64,
        "gpu": "L40S",
        "gpu_cost_per_hour": 1.0,
        **extra,
    }


@pytest.fixture
def make_fleet() -> Iterator[FleetFactory]:
    started: list[Fleet] = []

    def factory(
        backends: dict[str, Backend],
        *,
        policy: dict[str, Any] | None = None,
        resilience: dict[str, Any] | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        wait_fresh: bool = True,
    ) -> Fleet:
        fakes, servers, raws, rows = {}, {}, {}, []
        for backend_id, spec in backends.items():
            if isinstance(spec, RawServer):
                raws[backend_id] = spec.start()
                url, served = spec.url, spec.metrics_state.served_model_name
            else:
                fakes[backend_id] = FakeBackend(spec)
                servers[backend_id] = ThreadedServer(fakes[backend_id].app).start()
                url, served = servers[backend_id].url, spec.served_model_name
            rows.append(
                backend_row(backend_id, url, served, **(overrides or {}).get(backend_id, {}))
            )
        section: dict[str, Any] = {
            "scrape_interval_s": 0.1,
            "staleness_limit_s": 2.0,
            "tie_tolerance": 0.0,
            **(policy or {}),
        }
        config = parse_config(
            {
                "backends": rows,
                "groups": [{"name": "auto", "variants": ["v"]}],
                "policy": section,
                "resilience": resilience or {},
            }
        )
        gateway = GatewayThread(config).start()
        fleet = Fleet(gateway, config, fakes, servers, raws)
        started.append(fleet)
        if wait_fresh:
            assert wait_until(lambda: all(r["state"] == "fresh" for r in fleet.admin().values()))
        fleet.baseline_tasks = settled_task_count(gateway)
        return fleet

    yield factory
    for fleet in started:
        fleet.gateway.stop()
        for server in fleet.servers.values():
            server.stop()
        for raw in fleet.raws.values():
            raw.stop()
