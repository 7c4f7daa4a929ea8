"""End to end: the real gateway discovers fake vLLM backends from the fake Kubernetes API.

Pods advertise 127.0.0.1 and each fake backend's port; requests go through the official openai
client. Routing follows the pods: a backend joins when its pod is ready, leaves when it is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from quantroute.config import parse_config
from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.gateway_thread import GatewayThread

from .fake_kube import FakeKube, vllm_pod

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@dataclass
class Cluster:
    kube: FakeKube
    api: ThreadedServer
    backends: dict[str, FakeBackend]
    servers: dict[str, ThreadedServer]
    gateway: GatewayThread

    def pod(self, name: str, **kw: Any) -> dict[str, Any]:
        return vllm_pod(name, port=self.servers[name].port, **kw)

    def admin(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(self.gateway.url + "/admin/backends").json()["backends"]
        return {row["id"]: row for row in rows}

    def wait_routable(self, *ids: str) -> None:
        assert wait_until(
            lambda: {k for k, r in self.admin().items() if r["state"] == "fresh"} == set(ids),
            10.0,
        ), self.admin()

    def chosen(self, n: int) -> set[str]:
        client = openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="k", max_retries=0)
        with client:
            return {
                client.chat.completions.with_raw_response.create(
                    model="model-a",
                    messages=MSG,
                    max_tokens=2,
                ).headers["x-quantroute-backend"]
                for _ in range(n)
            }


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    kube = FakeKube()
    api = ThreadedServer(kube.app).start()
    backends = {n: FakeBackend(FakeState(served_model_name="model-a")) for n in ("pod-1", "pod-2")}
    servers: dict[str, ThreadedServer] = {}
    gateway: GatewayThread | None = None
    try:
        for name, backend in backends.items():
            servers[name] = ThreadedServer(backend.app).start()
        kube.put(vllm_pod("pod-1", port=servers["pod-1"].port))
        config = parse_config(
            {
                "discovery": {"kubernetes": {"api_url": api.url}},
                "policy": {"scrape_interval_s": 0.1, "picker": "round_robin"},
            }
        )
        gateway = GatewayThread(config).start()
        yield Cluster(kube, api, backends, servers, gateway)
    finally:
        if gateway is not None:
            gateway.stop()
        for server in servers.values():
            server.stop()
        kube.drop_watches()
        api.stop()


def test_routing_follows_pods_as_they_appear_change_and_disappear(cluster: Cluster) -> None:
    kube = cluster.kube
    cluster.wait_routable("pod-1")  # listed before the gateway started serving
    assert cluster.admin()["pod-1"]["url"] == cluster.servers["pod-1"].url
    assert cluster.chosen(4) == {"pod-1"}

    kube.put(cluster.pod("pod-2"))
    cluster.wait_routable("pod-1", "pod-2")
    assert cluster.chosen(6) == {"pod-1", "pod-2"}

    kube.put(cluster.pod("pod-1", ready=False))
    assert wait_until(lambda: set(cluster.admin()) == {"pod-2"}, 10.0)
    served = len(cluster.backends["pod-1"].state.received)
    assert cluster.chosen(4) == {"pod-2"}
    assert len(cluster.backends["pod-1"].state.received) == served

    kube.put(cluster.pod("pod-1"))
    kube.delete("pod-2")
    cluster.wait_routable("pod-1")
    assert cluster.chosen(4) == {"pod-1"}

    kube.delete("pod-1")
    assert wait_until(lambda: cluster.admin() == {}, 10.0)
    refused = httpx.post(
        cluster.gateway.url + "/v1/chat/completions",
        json={"model": "model-a", "messages": MSG, "max_tokens": 2},
    )
    assert refused.status_code == 404, refused.text
