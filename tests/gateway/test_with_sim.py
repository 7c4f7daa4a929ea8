"""The gateway in front of the vLLM-faithful simulator: real engines, real KV pressure, real aborts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quantroute.config import parse_config
from quantroute.sim.fleet import FleetHandle, SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

from .engine_waits import aborts_when_idle, wait_for_abort

TIME_SCALE = 1.0  # real time: the pinned requests must outlive a few scrapes


@dataclass
class SimStack:
    fleet: FleetHandle
    gateway: GatewayThread

    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self) -> openai.OpenAI:
        """An OpenAI client of the gateway, closed when the stack stops."""
        client = openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key="t", max_retries=0, timeout=60
        )
        self.clients.append(client)
        return client

    def vllm_metric(self, backend: str, name: str, **labels: str) -> float:
        text = httpx.get(self.fleet.urls[backend] + "/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def admin(self) -> dict[str, dict[str, Any]]:
        return {
            r["id"]: r for r in httpx.get(self.gateway.url + "/admin/backends").json()["backends"]
        }


@pytest.fixture
def sim_stack() -> Iterator[SimStack]:
    """A small L40S 8B-AWQ backend with a tiny KV cache beside a roomy Qwen backend."""
    specs = [
        SimBackendSpec(
            id="small",
            profile="llama3-8b-awq",
            num_gpu_blocks_override=160,
            max_num_seqs=8,
            max_model_len=2048,
        ),
        SimBackendSpec(id="roomy", profile="qwen25-7b-gptq", max_num_seqs=64),
    ]
    with run_fleet_in_thread(
        SimFleetConfig(time_scale=TIME_SCALE, seed=3, backends=specs), answer_key={}
    ) as fleet:
        rows = [
            {
                "id": "small",
                "url": fleet.urls["small"],
                "served_model_name": "llama3-8b-awq",
                "max_seq_len": 2048,
                "capacity": 8,
                "gpu_cost_per_hour": 1.2,
            },
            {
                "id": "roomy",
                "url": fleet.urls["roomy"],
                "served_model_name": "qwen25-7b-gptq",
                "max_seq_len": 32768,
                "capacity": 64,
                "gpu_cost_per_hour": 1.2,
            },
        ]
        config = parse_config(
            {
                "backends": rows,
                "groups": [{"name": "auto", "variants": ["small", "roomy"]}],
                "policy": {"scrape_interval_s": 0.1},
            }
        )
        with GatewayThread(config) as gateway:
            stack = SimStack(fleet, gateway)
            assert wait_until(lambda: all(r["state"] == "fresh" for r in stack.admin().values()))
            try:
                yield stack
            finally:
                for client in stack.clients:
                    client.close()


def test_stream_and_non_stream_through_the_simulator(sim_stack: SimStack) -> None:
    client = sim_stack.client()
    reply = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=12
    )
    assert reply.usage is not None and reply.usage.completion_tokens <= 12
    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert (
        sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        == chunks[-1].usage.completion_tokens
    )


def test_kv_pressure_from_real_engine_steers_long_prompts(sim_stack: SimStack) -> None:
    # 160 blocks x 16 = 2560 tokens of KV on "small": two pinned ~1000-token prompts fill ~80%.
    client = sim_stack.client()
    pinned = [
        client.chat.completions.create(
            model="llama3-8b-awq",
            messages=[{"role": "user", "content": "x" * 4000}],
            max_tokens=400,
            stream=True,
            extra_body={"ignore_eos": True},  # run to max_tokens, not a sampled natural length
        )
        for _ in range(2)
    ]
    for stream in pinned:
        next(iter(stream))  # admitted: first token out
    assert wait_until(
        lambda: (sim_stack.admin()["small"]["metrics"] or {}).get("kv_cache_usage_perc", 0) > 0.6,
        10,
    )
    row = sim_stack.admin()["small"]
    assert row["metrics"]["num_gpu_blocks"] == 160 and row["metrics"]["block_size"] == 16
    picks = set()
    for _ in range(4):
        with client.chat.completions.with_streaming_response.create(
            model="auto",
            messages=[{"role": "user", "content": "y" * 1200}],
            max_tokens=400,
            stream=True,
        ) as probe:
            picks.add(probe.headers["x-quantroute-backend"])
    assert picks == {"roomy"}
    text = httpx.get(sim_stack.gateway.url + "/metrics").text
    assert 'llm_router_cache_pressure_events_total{model_id="small"}' in text
    for stream in pinned:
        stream.close()


def test_client_disconnect_aborts_in_the_engine(sim_stack: SimStack) -> None:
    client = sim_stack.client()
    # the probes of the test before closed their streams early: their aborts land first
    before = aborts_when_idle(sim_stack.fleet.urls["roomy"])
    stream = client.chat.completions.create(
        model="qwen25-7b-gptq",
        messages=[{"role": "user", "content": "long story"}],
        max_tokens=2000,
        stream=True,
    )
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    wait_for_abort(sim_stack.fleet.urls["roomy"], before)


def test_over_length_prompt_never_reaches_the_engine(sim_stack: SimStack) -> None:
    client = sim_stack.client()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "z" * 200_000}], max_tokens=10
        )
    assert sim_stack.vllm_metric("small", "vllm:prompt_tokens_total") == 0
    assert sim_stack.vllm_metric("roomy", "vllm:prompt_tokens_total") == 0
