"""End to end: the real gateway finds its backends through a real DNS server on loopback.

As in a cluster with a headless Service: one name, one A record per Ready vLLM pod, all pods on
the same port. Here the pods are fake vLLM servers on 127.0.0.2-127.0.0.4 (one port), and the
test edits the records while the official openai client sends requests through the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from quantroute.config import parse_config
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread
from quantroute.testing.procs import free_port

from .dns_server import LoopbackDns

NAME = "vllm-a.quantroute.test"
PODS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@dataclass
class Cluster:
    dns: LoopbackDns
    backends: dict[str, FakeBackend]
    gateway: GatewayThread

    def admin(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(self.gateway.url + "/admin/backends").json()["backends"]
        return {row["id"]: row for row in rows}

    def wait_routable(self, *pods: str) -> None:
        want = {f"a-{pod}" for pod in pods}
        assert wait_until(
            lambda: (
                {k for k, r in self.admin().items() if r["state"] == "fresh"} == want
                and set(self.admin()) == want
            ),
            10.0,
        ), self.admin()

    def chosen(self, n: int) -> set[str]:
        client = openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="k", max_retries=0)
        with client:
            return {
                client.chat.completions.with_raw_response.create(
                    model="auto", messages=MSG, max_tokens=2
                ).headers["x-quantroute-backend"]
                for _ in range(n)
            }

    def series(self, name: str) -> dict[str, float]:
        """backend label -> value of a gateway metric with a ``backend`` label."""
        text = httpx.get(self.gateway.url + "/metrics").text
        return {
            s.labels["backend"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        }


def _pods_on_one_port(backends: dict[str, FakeBackend]) -> tuple[int, list[ThreadedServer]]:
    for _ in range(10):
        port, started = free_port(), []
        try:
            for pod in PODS:
                started.append(ThreadedServer(backends[pod].app, port, host=pod).start())
        except OSError:
            for server in started:
                server.stop()
            continue
        return port, started
    pytest.fail("no port free on every loopback address")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    backends = {pod: FakeBackend(FakeState(served_model_name="model-a")) for pod in PODS}
    port, servers = _pods_on_one_port(backends)
    gateway: GatewayThread | None = None
    try:
        with LoopbackDns() as dns:
            dns.zone.set(NAME, "127.0.0.2")
            config = parse_config(
                {
                    "backends": [
                        {
                            "id": "a",
                            "url": f"http://{NAME}:{port}",
                            "served_model_name": "model-a",
                            "max_seq_len": 8192,
                            "capacity": 64,
                            "gpu": "L40S",
                            "gpu_cost_per_hour": 1.2,
                        }
                    ],
                    "groups": [{"name": "auto", "variants": ["a"]}],
                    "discovery": {
                        "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "interval_s": 0.1}
                    },
                    "policy": {"scrape_interval_s": 0.1, "picker": "round_robin"},
                }
            )
            gateway = GatewayThread(config).start()
            yield Cluster(dns, backends, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        for server in servers:
            server.stop()


def test_each_pod_behind_the_name_is_a_backend_and_routing_follows_the_records(
    cluster: Cluster,
) -> None:
    # Resolved before the gateway served its first request; the template is never a backend.
    cluster.wait_routable("127.0.0.2")
    assert cluster.admin()["a-127.0.0.2"]["url"].endswith("//127.0.0.2:" + _port(cluster))
    assert cluster.chosen(3) == {"a-127.0.0.2"}
    assert "a" not in cluster.series("quantroute_backend_gpu_cost_per_hour")

    cluster.dns.zone.set(NAME, "127.0.0.2", "127.0.0.3", "127.0.0.4")  # scaled to three pods
    cluster.wait_routable(*PODS)
    assert cluster.chosen(9) == {f"a-{pod}" for pod in PODS}
    assert cluster.series("quantroute_backend_gpu_cost_per_hour") == {
        f"a-{pod}": 1.2 for pod in PODS
    }

    cluster.dns.zone.set(NAME, "127.0.0.3", "127.0.0.4")  # one pod no longer Ready
    cluster.wait_routable("127.0.0.3", "127.0.0.4")
    served = len(cluster.backends["127.0.0.2"].state.received)
    assert cluster.chosen(6) == {"a-127.0.0.3", "a-127.0.0.4"}
    assert len(cluster.backends["127.0.0.2"].state.received) == served
    # Its gauges went with it: no lingering state for alerts, no price in the fleet's cost.
    assert "a-127.0.0.2" not in cluster.series("quantroute_backend_gpu_cost_per_hour")
    assert "a-127.0.0.2" not in cluster.series("quantroute_backend_up")

    cluster.dns.zone.remove(NAME)  # no pod left: NXDOMAIN
    assert wait_until(lambda: cluster.admin() == {}, 10.0), cluster.admin()
    refused = httpx.post(
        cluster.gateway.url + "/v1/chat/completions",
        json={"model": "auto", "messages": MSG, "max_tokens": 2},
    )
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "no_backend_available"
    assert httpx.get(cluster.gateway.url + "/ready").status_code == 503


def test_a_dns_outage_keeps_routing_to_the_pods_last_resolved(cluster: Cluster) -> None:
    cluster.dns.zone.set(NAME, "127.0.0.2", "127.0.0.3")
    cluster.wait_routable("127.0.0.2", "127.0.0.3")
    cluster.dns.zone.fail("servfail")
    queries = sum(cluster.dns.zone.queries.values())
    assert wait_until(lambda: sum(cluster.dns.zone.queries.values()) >= queries + 3, 5.0)
    assert set(cluster.admin()) == {"a-127.0.0.2", "a-127.0.0.3"}
    assert cluster.chosen(4) == {"a-127.0.0.2", "a-127.0.0.3"}


def _port(cluster: Cluster) -> str:
    url = str(cluster.admin()["a-127.0.0.2"]["url"])
    return url.rsplit(":", 1)[1]
