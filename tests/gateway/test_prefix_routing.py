"""Prefix-aware routing through the real gateway in front of simulated vLLM replicas.

Three replicas of one variant with prefix caching (the simulator's default, as vLLM's); the
gateway keeps its prefix index because the policy names the ``prefix`` scorer.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from quantroute.config import parse_config
from quantroute.sim.fleet import FleetHandle, SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

REPLICAS = ("r1", "r2", "r3")
MODEL = "llama3-8b-awq"
INSTRUCTIONS = (
    "You are the travel desk of a small agency. Bookings, refunds and changes follow "
    "the handbook below.\n\n" + "Handbook paragraph about fares and their conditions. " * 80
)
SYSTEM: ChatCompletionMessageParam = {"role": "system", "content": INSTRUCTIONS}
POLICY: dict[str, Any] = {
    "scrape_interval_s": 0.1,
    "filters": ["context", "kv_ceiling"],
    "scorers": {
        "interactive": [
            {"name": "least_loaded", "weight": 0.5},
            {"name": "prefix", "weight": 0.5, "parameters": {"balance_abs_threshold": 2}},
        ],
        "batch": [{"name": "least_loaded", "weight": 1.0}],
    },
    "tie_tolerance": 0.0,
}


class Stack:
    def __init__(self, fleet: FleetHandle, gateway: GatewayThread) -> None:
        self.fleet = fleet
        self.gateway = gateway
        self.url = gateway.url

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="t", max_retries=0, timeout=60)

    def admin(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(self.url + "/admin/backends").json()["backends"]
        return {r["id"]: r for r in rows}

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def ask(self, messages: list[ChatCompletionMessageParam], **extra: Any) -> tuple[str, str]:
        """(backend, answer) of one non-streamed chat through the gateway."""
        raw = self.client().chat.completions.with_raw_response.create(
            model="auto",
            messages=messages,
            max_tokens=6,
            **extra,
        )
        answer = raw.parse().choices[0].message.content or ""
        return raw.headers["x-quantroute-backend"], answer


@pytest.fixture
def stack() -> Iterator[Stack]:
    specs = [SimBackendSpec(id=r, profile=MODEL, max_num_seqs=64) for r in REPLICAS]
    with run_fleet_in_thread(
        SimFleetConfig(time_scale=1.0, seed=5, backends=specs), answer_key={}
    ) as fleet:
        rows = [
            {"id": r, "url": fleet.urls[r], "served_model_name": MODEL, "variant": MODEL,
             "max_seq_len": 8192, "capacity": 64, "gpu_cost_per_hour": 1.2}
            for r in REPLICAS
        ]  # fmt: skip
        config = parse_config(
            {"backends": rows, "groups": [{"name": "auto", "variants": [MODEL]}], "policy": POLICY}
        )
        with GatewayThread(config) as gateway:
            s = Stack(fleet, gateway)
            assert wait_until(lambda: all(r["state"] == "fresh" for r in s.admin().values()))
            yield s


def test_a_conversation_stays_on_its_backend_and_moves_when_that_one_is_saturated(
    stack: Stack,
) -> None:
    messages: list[ChatCompletionMessageParam] = [
        SYSTEM,
        {"role": "user", "content": "I need to move my flight to Friday."},
    ]
    first, answer = stack.ask(messages)
    for question in ("Is there a fee for that?", "Can I keep my seat?"):
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": question},
        ]
        backend, answer = stack.ask(messages)
        assert backend == first  # the later turns go where the conversation's prefix is cached

    # saturate it: long generations pinned to it by id, until its scrape shows them running
    async def saturate() -> tuple[str, dict[str, Any], int]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
            body = {"model": first, "messages": [{"role": "user", "content": "Write a long story."}],
                    "max_tokens": 4000, "ignore_eos": True, "stream": True}  # fmt: skip
            streams = [http.stream("POST", "/v1/chat/completions", json=body) for _ in range(8)]
            opened = [await s.__aenter__() for s in streams]
            try:
                for _ in range(200):
                    if (stack.admin()[first]["metrics"] or {}).get("num_requests_running", 0) >= 8:
                        break
                    await asyncio.sleep(0.05)
                messages.extend([{"role": "assistant", "content": answer},
                                 {"role": "user", "content": "And a refund instead?"}])  # fmt: skip
                explain = (await http.post("/v1/route/explain", json={
                    "model": "auto", "messages": messages, "max_tokens": 6})).json()  # fmt: skip
                moved, _ = await asyncio.to_thread(stack.ask, messages)
                return moved, explain, len(opened)
            finally:
                for stream in streams:
                    await stream.__aexit__(None, None, None)

    moved, explain, opened = asyncio.run(saturate())
    assert opened == 8
    assert moved != first
    shares = explain["prefix"]["expected_hit_share"]
    assert shares[first] > 0.8  # it still holds the conversation...
    scores = {c["backend"]: c["scores"] for c in explain["candidates"]}
    assert scores[first]["prefix"] == 0.0  # ...but is too far ahead in load to get the bonus
    assert stack.metric("quantroute_prefix_affinity_withdrawn_total", backend=first) >= 1


def test_a_hot_prefix_does_not_pile_onto_one_backend(stack: Stack) -> None:
    seed, _ = stack.ask([SYSTEM, {"role": "user", "content": "Hello."}])

    async def burst() -> list[str]:
        client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="t", max_retries=0)
        try:
            calls = [
                client.chat.completions.with_raw_response.create(
                    model="auto",
                    messages=[SYSTEM, {"role": "user", "content": f"Question number {i}?"}],
                    max_tokens=150,
                    extra_body={"ignore_eos": True},
                )
                for i in range(30)
            ]
            return [r.headers["x-quantroute-backend"] for r in await asyncio.gather(*calls)]
        finally:
            await client.close()

    picks = Counter(asyncio.run(burst()))
    print(f"seeded on {seed}, burst picks {dict(picks)}")
    assert set(picks) == set(REPLICAS)
    assert picks[seed] >= max(picks.values()) - 3  # the cached one is used most, or nearly
    assert picks[seed] <= 14  # but at most 2 ahead of the others at each decision: ~10 of 30


def test_expected_and_reported_hit_rates_side_by_side(stack: Stack) -> None:
    for question in ("First question?", "Second question?", "Third question?"):
        backend, _ = stack.ask([SYSTEM, {"role": "user", "content": question}], user="u-42")
    assert wait_until(
        lambda: ((stack.admin()[backend]["metrics"] or {}).get("prefix_cache_hit_rate") or 0) > 0
    )
    row = stack.admin()[backend]
    assert row["prefix"]["expected_hit_rate"] > 0.5
    assert row["prefix"]["index_entries"] > 0
    assert row["metrics"]["prefix_cache_hit_rate"] > 0.5  # the simulator's own counters
    expected = stack.metric("quantroute_prefix_expected_hit_tokens_total", backend=backend)
    sent = stack.metric("quantroute_prefix_prompt_tokens_total", backend=backend)
    assert 0.5 < expected / sent < 1.0
    assert stack.metric("quantroute_backend_prefix_cache_hit_ratio", backend=backend) > 0.5
    explain = httpx.post(
        stack.url + "/v1/route/explain",
        json={"model": "auto", "messages": [SYSTEM, {"role": "user", "content": "Fourth?"}],
              "user": "u-42"},
    ).json()  # fmt: skip
    assert explain["prefix"]["session_id"] == "u-42"
    assert explain["prefix"]["session_backend"] == backend
    assert explain["prefix"]["expected_hit_share"][backend] > 0.8


def test_a_responses_api_conversation_follows_its_prefix_too(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.with_raw_response.create(
        model="auto", instructions=INSTRUCTIONS, input="Can I bring a bicycle?",
        max_output_tokens=6,
    )  # fmt: skip
    backend = first.headers["x-quantroute-backend"]
    previous = first.parse().id
    for question in ("And a surfboard?", "What does it cost?"):
        turn = client.responses.with_raw_response.create(  # instructions do not carry over
            model="auto", instructions=INSTRUCTIONS, previous_response_id=previous,
            input=question, max_output_tokens=6,
        )  # fmt: skip
        assert turn.headers["x-quantroute-backend"] == backend
        previous = turn.parse().id
    assert stack.admin()[backend]["prefix"]["expected_hit_rate"] > 0.3
    # and the simulated backend found the conversation in its own prefix cache
    assert wait_until(
        lambda: ((stack.admin()[backend]["metrics"] or {}).get("prefix_cache_hit_rate") or 0) > 0.3
    )
