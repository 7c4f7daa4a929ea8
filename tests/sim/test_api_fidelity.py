"""The simulator's Responses, Messages and pooling answers have the shape of real vLLM 0.32's.

Compared with the captures in tests/fixtures/vllm/ (a real vLLM CPU server, tiny model): the
same fields, nested, with the same JSON types, in the same order; streams with the same event
names in the same order (the number of deltas aside).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig

from .conftest import VLLM_FIXTURES

GEN = {"model": "llama3-8b-awq"}
POOL = {"model": "e5-mistral-7b"}


def shape(value: Any) -> Any:
    """Keys (in order) and JSON types, recursively; lists by their first element."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return ["list", shape(value[0])] if value else ["list"]
    if isinstance(value, bool) or value is None:
        return repr(value) if value is None else "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def frames(text: str) -> list[tuple[str, Any]]:
    """(event name, data) of each SSE frame."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def collapse(names: list[str]) -> list[str]:
    """Event names with runs of the same name folded into one."""
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def capture(name: str) -> str:
    return (VLLM_FIXTURES / name).read_text()


@pytest.fixture
async def both() -> AsyncIterator[SimFleet]:
    config = SimFleetConfig(
        time_scale=100,
        seed=3,
        backends=[
            SimBackendSpec(id="gen", profile="llama3-8b-awq"),
            SimBackendSpec(id="pool", profile="e5-mistral-7b"),
        ],
    )
    async with SimFleet(config, answer_key={}) as fleet:
        yield fleet


async def test_responses_non_stream_shape(both: SimFleet, http: httpx.AsyncClient) -> None:
    body = {**GEN, "input": "Say hello.", "instructions": "Be brief.", "max_output_tokens": 8}
    sim = (await http.post(both.urls["gen"] + "/v1/responses", json=body)).json()
    real = json.loads(capture("vllm_responses_nonstream.json"))
    assert shape(sim) == shape(real)
    assert (sim["status"], sim["incomplete_details"]) == ("incomplete", real["incomplete_details"])


async def test_responses_stream_shape(both: SimFleet, http: httpx.AsyncClient) -> None:
    body = {**GEN, "input": "Say hello.", "max_output_tokens": 3, "stream": True}
    reply = await http.post(both.urls["gen"] + "/v1/responses", json=body)
    sim, real = frames(reply.text), frames(capture("vllm_responses_stream.txt"))
    assert collapse([n for n, _ in sim]) == collapse([n for n, _ in real])
    real_by_name = {n: d for n, d in real}
    for name, data in sim:
        assert data["type"] == name
        assert shape(data) == shape(real_by_name[name]), name
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"


async def test_messages_shapes(both: SimFleet, http: httpx.AsyncClient) -> None:
    body = {**GEN, "max_tokens": 4, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello."}]}  # fmt: skip
    sim = (await http.post(both.urls["gen"] + "/v1/messages", json=body)).json()
    assert shape(sim) == shape(json.loads(capture("vllm_messages_nonstream.json")))
    streamed = await http.post(
        both.urls["gen"] + "/v1/messages", json={**body, "max_tokens": 3, "stream": True}
    )
    sim_frames, real = frames(streamed.text), frames(capture("vllm_messages_stream.txt"))
    assert collapse([n for n, _ in sim_frames]) == collapse([n for n, _ in real])
    real_by_name = {n: d for n, d in real}
    for name, data in sim_frames:
        assert shape(data) == shape(real_by_name[name]), name


@pytest.mark.parametrize(
    ("path", "body", "fixture"),
    [
        ("/v1/embeddings", {"input": ["hello world", "bye"]}, "vllm_embeddings.json"),
        ("/v1/score", {"text_1": "hello", "text_2": ["hello", "bye"]}, "vllm_score.json"),
        ("/v1/rerank", {"query": "hello", "documents": ["hello", "bye", "x"], "top_n": 2},
         "vllm_rerank.json"),
    ],
)  # fmt: skip
async def test_pooling_shapes(
    both: SimFleet, http: httpx.AsyncClient, path: str, body: dict[str, Any], fixture: str
) -> None:
    sim = (await http.post(both.urls["pool"] + path, json={**POOL, **body})).json()
    real = json.loads(capture(fixture))
    assert shape(sim) == shape(real)
    sim_prefix, sim_hex = sim["id"].split("-", 1)
    real_prefix, real_hex = real["id"].split("-", 1)
    assert (sim_prefix, len(sim_hex)) == (real_prefix, len(real_hex))


async def test_each_kind_answers_the_other_kinds_routes_404(
    both: SimFleet, http: httpx.AsyncClient
) -> None:
    gen_on_pool = await http.post(both.urls["pool"] + "/v1/responses", json={**POOL, "input": "x"})
    pool_on_gen = await http.post(both.urls["gen"] + "/v1/embeddings", json={**GEN, "input": "x"})
    assert gen_on_pool.status_code == pool_on_gen.status_code == 404
    assert gen_on_pool.json() == pool_on_gen.json() == {"detail": "Not Found"}
