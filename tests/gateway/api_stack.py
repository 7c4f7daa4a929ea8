"""The gateway in front of a simulated fleet that serves every API: two generative backends and
one embedding backend, with the official OpenAI and Anthropic clients pointed at the gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantroute.config import parse_config
from quantroute.sim.fleet import FleetHandle, SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

ANSWER_KEY = {
    "Say hello.": ("chat", "Hello! How can I help you today?"),
    "Name a colour.": ("chat", "Blue is a colour."),
    "And a number?": ("chat", "Seven is a number."),
    "Count to three thousand.": ("reasoning", "step " * 3000 + "= 3000"),
}
GENERATIVE = ("gen-a", "gen-b")
EMBED = "embed"
SERVED = {"gen-a": "llama3-8b-awq", "gen-b": "qwen25-7b-gptq", EMBED: "e5-mistral-7b"}


@dataclass
class ApiStack:
    fleet: FleetHandle
    gateway: GatewayThread
    clients: list[openai.OpenAI | anthropic.Anthropic] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def openai(self) -> openai.OpenAI:
        """An OpenAI client of the gateway, closed when the stack stops."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="t", max_retries=0, timeout=60)
        self.clients.append(client)
        return client

    def anthropic(self) -> anthropic.Anthropic:
        """An Anthropic client of the gateway, closed when the stack stops."""
        client = anthropic.Anthropic(base_url=self.url, api_key="t", max_retries=0, timeout=60)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def received(self, backend: str, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.fleet.received(backend) if p == path]

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def admin(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(self.url + "/admin/backends").json()["backends"]
        return {r["id"]: r for r in rows}


def gateway_config(urls: dict[str, str], **extra: Any) -> dict[str, Any]:
    def row(backend: str, **more: Any) -> dict[str, Any]:
        return {"id": backend, "url": urls[backend], "served_model_name": SERVED[backend],
                "max_seq_len": 8192, "capacity": 64, "gpu_cost_per_hour": 1.0, **more}  # fmt: skip

    return {
        "backends": [
            row("gen-a"),
            row("gen-b"),
            row(EMBED, max_seq_len=4096, apis=["embeddings", "score", "rerank"]),
        ],
        "groups": [
            {"name": "auto", "variants": [*GENERATIVE, EMBED], "quality_floor": 0.5},
            {"name": "embed", "variants": [EMBED]},
            {"name": "chat-only", "variants": list(GENERATIVE)},
        ],
        "policy": {"scrape_interval_s": 0.1, "picker": "round_robin"},
        **extra,
    }


def capability_matrix() -> dict[str, Any]:
    """A matrix under which the embedding variant may take no task at all: pooling requests,
    which the matrix does not describe, must be routed to it anyway."""
    tasks = ("coding", "reasoning", "extraction", "chat")
    good = {t: {"quality": 0.9, "stable": True} for t in tasks}
    bad = {t: {"quality": 0.0, "stable": False, "reason": "not generative"} for t in tasks}
    return {
        "schema_version": 1,
        "generated_at": "2026-11-25T00:00:00+00:00",
        "variants": {
            "gen-a": {"ttft_ms": {"p50": 30.0}, "cost_per_1m_output_tokens": 0.5, "tasks": good},
            "gen-b": {"ttft_ms": {"p50": 30.0}, "cost_per_1m_output_tokens": 0.5, "tasks": good},
            EMBED: {"ttft_ms": {"p50": 9000.0}, "cost_per_1m_output_tokens": 99.0, "tasks": bad},
        },
    }


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    specs = [
        SimBackendSpec(id="gen-a", profile="llama3-8b-awq"),
        SimBackendSpec(id="gen-b", profile="qwen25-7b-gptq"),
        SimBackendSpec(id=EMBED, profile="e5-mistral-7b"),
    ]
    config = SimFleetConfig(time_scale=2, seed=5, backends=specs)  # a long answer outlives a client
    matrix = tmp_path_factory.mktemp("matrix") / "capability_matrix.json"
    matrix.write_text(json.dumps(capability_matrix()))
    with run_fleet_in_thread(config, answer_key=ANSWER_KEY) as fleet:
        gateway_cfg = parse_config(gateway_config(fleet.urls, matrix_path=str(matrix)))
        with GatewayThread(gateway_cfg) as gateway:
            stack = ApiStack(fleet, gateway)
            assert wait_until(lambda: all(r["state"] == "fresh" for r in stack.admin().values()))
            try:
                yield stack
            finally:
                stack.close_clients()
