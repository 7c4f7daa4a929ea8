"""Automatic prefix caching on real vLLM 0.32 (CPU, the tiny model) and on the simulator.

The same two chats (one long shared system prompt, two different questions) go to a real vLLM
server and to a simulated one; both must count the second chat's shared prefix as cache hits,
in tokens, in whole blocks of their own block size (128 on vLLM's CPU backend, 16 in the
simulator), and both must count every prompt token as a query.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig

from .conftest import LARGE_KV, VllmTier
from .metrics import sample_sum, scrape

pytestmark = pytest.mark.vllm

SYSTEM = (
    "You are the help desk of a small bakery. Opening hours are from seven to six, the "
    "ovens are cleaned on Mondays, bread is baked twice a day and the cakes need two days "
    "of notice. "
) * 6
QUESTIONS = ("Can I order a birthday cake for Friday?", "When is the rye bread ready?")


def chat(question: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def counters(text: str) -> tuple[float, float]:
    return (
        sample_sum(text, "vllm:prefix_cache_queries_total"),
        sample_sum(text, "vllm:prefix_cache_hits_total"),
    )


def ask_twice(client: openai.OpenAI, model: str) -> list[int]:
    prompts = []
    for question in QUESTIONS:
        response = client.chat.completions.create(
            model=model, messages=chat(question), max_tokens=4, temperature=0.0
        )
        assert response.usage is not None
        prompts.append(response.usage.prompt_tokens)
    return prompts


def test_real_vllm_counts_a_repeated_prefix_as_hits(vllm_tier: VllmTier) -> None:
    server = vllm_tier.servers[LARGE_KV.name]
    text = scrape(server.url)
    assert sample_sum(text, "vllm:cache_config_info", enable_prefix_caching="True") == 1.0
    before = counters(text)
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0) as client:
        prompts = ask_twice(client, LARGE_KV.name)
    queries, hits = (a - b for a, b in zip(counters(scrape(server.url)), before, strict=True))
    print(f"real vLLM: prompts {prompts}, queries {queries:.0f}, hits {hits:.0f}")
    assert prompts[1] > 2 * 128  # the shared prefix spans whole 128-token blocks
    assert queries == sum(prompts)
    assert hits > 0
    assert hits % 128 == 0
    assert hits <= prompts[1] - 1
    assert hits / prompts[1] > 0.5


def test_the_simulator_counts_the_same_prefix_as_hits() -> None:
    async def run() -> tuple[list[int], tuple[float, float]]:
        spec = SimBackendSpec(id="sim", profile="llama3-8b-awq", max_model_len=1024)
        async with SimFleet(SimFleetConfig(time_scale=50, backends=[spec])) as fleet:
            url = fleet.urls["sim"]
            with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
                prompts = await asyncio.to_thread(ask_twice, client, "llama3-8b-awq")
            return prompts, counters(await asyncio.to_thread(scrape, url))

    prompts, (queries, hits) = asyncio.run(run())
    print(f"simulator: prompts {prompts}, queries {queries:.0f}, hits {hits:.0f}")
    assert queries == sum(prompts)
    assert hits > 0
    assert hits % 16 == 0
    assert hits / prompts[1] > 0.5
