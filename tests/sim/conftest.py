"""Fixtures for the simulator's tests: a small answer key and a fleet on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import openai
import pytest

from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig

VLLM_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vllm"

ANSWER_KEY = {
    "What is 17 * 3? Answer with the number only.": ("reasoning", "51"),
    'Extract {"name", "age"} as JSON from: Ada is 36.': (
        "extraction",
        '{"name": "Ada", "age": 36}',
    ),
    "Write a Python function add(a, b) returning the sum.": (
        "coding",
        "def add(a, b):\n    return a + b",
    ),
    "Say hello.": ("chat", "Hello! How can I help you today?"),
}


def fleet_config(time_scale: float = 100.0) -> SimFleetConfig:
    return SimFleetConfig(
        time_scale=time_scale,
        seed=3,
        backends=[
            SimBackendSpec(id="awq", profile="llama3-8b-awq"),
            SimBackendSpec(
                id="small",
                profile="llama3-8b-fp16",
                served_model_name="tiny-llama",
                max_model_len=512,
            ),
            SimBackendSpec(id="legacy", profile="qwen25-7b-gptq", legacy_metric_names=True),
        ],
    )


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    async with SimFleet(fleet_config(), answer_key=ANSWER_KEY) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


OpenAIFactory = Callable[[str], openai.AsyncOpenAI]


@pytest.fixture
async def openai_for() -> AsyncIterator[OpenAIFactory]:
    """Official OpenAI clients for backend URLs, closed after the test."""
    clients: list[openai.AsyncOpenAI] = []

    def make(url: str) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
