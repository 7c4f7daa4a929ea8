"""Embeddings, score and rerank of a simulated embedding backend (vLLM's pooling runner)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig
from quantroute.sim.text import completion_prompt_tokens

from .conftest import OpenAIFactory


@pytest.fixture
async def pool_fleet() -> AsyncIterator[SimFleet]:
    config = SimFleetConfig(
        time_scale=100,
        seed=3,
        backends=[
            SimBackendSpec(id="embed", profile="e5-mistral-7b"),
            SimBackendSpec(id="gen", profile="llama3-8b-awq"),
            SimBackendSpec(id="converted", profile="llama3-8b-fp16", runner="pooling"),
        ],
    )
    async with SimFleet(config, answer_key={}) as running:
        yield running


async def test_embeddings_through_the_official_client(
    openai_for: OpenAIFactory, pool_fleet: SimFleet
) -> None:
    client = openai_for(pool_fleet.urls["embed"])
    texts = ["the cat sat on the mat", "a cat on a mat", "quarterly revenue grew"]
    result = await client.embeddings.create(model="e5-mistral-7b", input=texts)
    assert result.model == "e5-mistral-7b"
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 4096 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    similar = sum(a * b for a, b in zip(vectors[0], vectors[1], strict=True))
    unrelated = sum(a * b for a, b in zip(vectors[0], vectors[2], strict=True))
    assert similar > unrelated
    assert result.usage.prompt_tokens == sum(completion_prompt_tokens(t) for t in texts)
    # the client asked for base64 (its default); floats decode to the same vector
    as_floats = await client.embeddings.create(
        model="e5-mistral-7b", input=texts[0], encoding_format="float"
    )
    assert as_floats.data[0].embedding == pytest.approx(vectors[0], rel=1e-6, abs=1e-7)


async def test_converted_generative_model_embeds_with_its_hidden_size(
    openai_for: OpenAIFactory, pool_fleet: SimFleet
) -> None:
    result = await openai_for(pool_fleet.urls["converted"]).embeddings.create(
        model="llama3-8b-fp16", input="hello"
    )
    assert len(result.data[0].embedding) == 4096  # 32 heads x 128


async def test_rerank_orders_documents_by_relevance(
    http: httpx.AsyncClient, pool_fleet: SimFleet
) -> None:
    docs = ["stock prices fell", "the cat sat on the mat", "cats like mats"]
    reply = await http.post(
        pool_fleet.urls["embed"] + "/v1/rerank",
        json={
            "model": "e5-mistral-7b",
            "query": "where did the cat sit",
            "documents": docs,
            "top_n": 2,
        },
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["id"].startswith("score-")
    assert body["results"][0]["index"] == 1
    assert len(body["results"]) == 2
    assert body["results"][0]["document"] == {"text": docs[1], "multi_modal": None}
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


async def test_score_pairs_one_to_many(http: httpx.AsyncClient, pool_fleet: SimFleet) -> None:
    reply = await http.post(
        pool_fleet.urls["embed"] + "/v1/score",
        json={"model": "e5-mistral-7b", "text_1": "the cat", "text_2": ["the cat", "stocks"]},
    )
    body = reply.json()
    assert [d["object"] for d in body["data"]] == ["score", "score"]
    assert body["data"][0]["score"] == pytest.approx(1.0)
    assert body["data"][0]["score"] > body["data"][1]["score"]
    bad = await http.post(
        pool_fleet.urls["embed"] + "/v1/score",
        json={"model": "e5-mistral-7b", "text_1": ["a", "b"], "text_2": ["a", "b", "c"]},
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "Input lengths must be either 1:1, 1:N or N:N"


async def test_each_runner_serves_only_its_own_routes(
    openai_for: OpenAIFactory, pool_fleet: SimFleet
) -> None:
    with pytest.raises(openai.NotFoundError):
        await openai_for(pool_fleet.urls["embed"]).chat.completions.create(
            model="e5-mistral-7b", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.NotFoundError):
        await openai_for(pool_fleet.urls["gen"]).embeddings.create(
            model="llama3-8b-awq", input="hi"
        )


async def test_dimensions_are_refused_for_a_model_without_matryoshka(
    openai_for: OpenAIFactory, pool_fleet: SimFleet
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_for(pool_fleet.urls["embed"]).embeddings.create(
            model="e5-mistral-7b", input="hi", dimensions=256
        )
    assert "Matryoshka" in str(caught.value)


async def test_pooling_requests_run_through_the_engine(
    http: httpx.AsyncClient, pool_fleet: SimFleet
) -> None:
    await http.post(
        pool_fleet.urls["embed"] + "/v1/embeddings",
        json={"model": "e5-mistral-7b", "input": ["one", "two", "three"]},
    )
    metrics = (await http.get(pool_fleet.urls["embed"] + "/metrics")).text
    line = next(m for m in metrics.splitlines() if m.startswith("vllm:prompt_tokens_total{"))
    expected = sum(completion_prompt_tokens(t) for t in ("one", "two", "three"))
    assert float(line.rsplit(" ", 1)[1]) == expected
