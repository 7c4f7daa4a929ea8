"""Embeddings, score and rerank through the gateway: routed to the backends of the group that
serve them, on load alone."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from quantroute.testing.fake_backend import wait_until

from .api_stack import EMBED, GENERATIVE, ApiStack, api_stack

__all__ = ["api_stack"]


def test_embeddings_go_to_the_embedding_backend_of_the_group(api_stack: ApiStack) -> None:
    before = api_stack.metric("quantroute_prompt_tokens_total", backend=EMBED)
    raw = api_stack.openai().embeddings.with_raw_response.create(
        model="auto", input=["the cat sat", "a cat sat down"]
    )
    result = raw.parse()
    assert raw.headers["x-quantroute-backend"] == EMBED
    assert len(result.data) == 2 and len(result.data[0].embedding) == 4096
    assert math.isclose(sum(x * x for x in result.data[0].embedding), 1.0, rel_tol=1e-5)
    sent = api_stack.received(EMBED, "/v1/embeddings")[-1]
    assert sent["model"] == "e5-mistral-7b" and sent["input"] == ["the cat sat", "a cat sat down"]
    assert wait_until(
        lambda: (
            api_stack.metric("quantroute_prompt_tokens_total", backend=EMBED)
            == before + result.usage.prompt_tokens
        )
    )


def test_chat_in_the_same_group_never_goes_to_the_embedding_backend(api_stack: ApiStack) -> None:
    create = api_stack.openai().chat.completions.with_raw_response.create
    picks = {
        create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=2).headers[
            "x-quantroute-backend"
        ]
        for _ in range(4)
    }
    assert picks == set(GENERATIVE)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rerank", {"query": "where is the cat", "documents": ["stocks fell", "the cat sat"]}),
        ("/v1/score", {"text_1": "the cat", "text_2": ["the cat", "stocks"]}),
        ("/rerank", {"query": "cat", "documents": ["cat"]}),
        ("/score", {"text_1": "cat", "text_2": "cat"}),
    ],
)
def test_score_and_rerank_are_routed_and_relayed(
    api_stack: ApiStack, path: str, body: dict[str, object]
) -> None:
    reply = httpx.post(api_stack.url + path, json={"model": "embed", **body}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-quantroute-backend"] == EMBED
    assert reply.json()["usage"]["prompt_tokens"] > 0


def test_a_group_without_an_embedding_backend_refuses_embeddings(api_stack: ApiStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        api_stack.openai().embeddings.create(model="chat-only", input="x")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"
    assert "embeddings" in caught.value.message


def test_pooling_routing_ignores_the_quality_matrix(api_stack: ApiStack) -> None:
    # the matrix marks the embedding variant unstable for every task and below the floor of
    # 'auto', and its latency and cost as the worst: none of that applies to embeddings
    for path, body in (
        ("/v1/embeddings", {"input": "x"}),
        ("/v1/rerank", {"query": "x", "documents": ["y"]}),
    ):
        reply = httpx.post(api_stack.url + path, json={"model": "auto", **body}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-quantroute-backend"] == EMBED
        assert "quality" not in reply.headers["x-quantroute-decision"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", b"{not json", None),
        ("/v1/embeddings", b'{"model": "auto"}', "input"),
        ("/v1/embeddings", b'{"model": "auto", "input": [null]}', "input"),
        ("/v1/embeddings", b'{"input": "x"}', "model"),
        ("/v1/rerank", b'{"model": "auto", "documents": ["x"]}', "query"),
        ("/v1/score", b'{"model": "auto", "text_1": "x"}', "text_1"),
        ("/v1/score", b"[]", None),
    ],
)
def test_bad_input_gets_an_openai_error(
    api_stack: ApiStack, path: str, body: bytes, param: str | None
) -> None:
    reply = httpx.post(
        api_stack.url + path, content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_an_input_longer_than_every_embedding_backend_is_refused_before_forwarding(
    api_stack: ApiStack,
) -> None:
    count = len(api_stack.received(EMBED, "/v1/embeddings"))
    with pytest.raises(openai.BadRequestError) as caught:
        api_stack.openai().embeddings.create(model="embed", input="word " * 5000)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert len(api_stack.received(EMBED, "/v1/embeddings")) == count
