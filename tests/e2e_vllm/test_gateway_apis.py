"""The Responses API, Anthropic Messages and embeddings through `quantroute serve` to real vLLM.

The Responses and Messages tests use the tier's two generative servers. For embeddings a third
server serves the same tiny model with vLLM's pooling runner (``--runner pooling --convert
embed``: the causal LM becomes an embedding model), beside the generative ones in one group,
behind a second gateway. Outputs of random weights are random, so shapes, usage and routing are
asserted, never text.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import httpx
import openai
import pytest

from .conftest import REPORT_KEY, Gateway, VllmTier
from .procs import ManagedProcess
from .stack import Variant, VllmServer, gateway_config, start_gateway, start_vllm

pytestmark = pytest.mark.vllm
BACKEND = "x-quantroute-backend"
EMBED = Variant(
    "tiny-embed", 512, extra_args=("--runner", "pooling", "--convert", "embed"), cpu_bind="1"
)


def test_responses_non_stream_and_stream(client: openai.OpenAI, gateway: Gateway) -> None:
    response = client.responses.create(
        model=gateway.group, instructions="Be brief.", input="hello the kalo mira",
        max_output_tokens=8,
    )  # fmt: skip
    assert response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None and 0 < response.usage.output_tokens <= 8
    events = list(
        client.responses.create(
            model=gateway.group, input="hello the kalo mira", max_output_tokens=8, stream=True
        )
    )
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert any(e.type == "response.output_text.delta" for e in events)


def test_a_conversation_crosses_backends_and_grows(client: openai.OpenAI) -> None:
    # pinning each turn by served name puts them on different vLLM servers: neither has the
    # other's turns (vLLM's store is off); the gateway sends the whole conversation each time
    first = client.responses.create(
        model="tiny-a", input="hello the kalo mira", max_output_tokens=8
    )
    raw = client.responses.with_raw_response.create(
        model="tiny-b", input="and then mira kalo", max_output_tokens=8,
        previous_response_id=first.id,
    )  # fmt: skip
    second = raw.parse()
    assert raw.headers[BACKEND] == "tiny-b"
    assert first.usage is not None and second.usage is not None
    # the second prompt holds the first turn's input and its answer
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.previous_response_id == first.id
    assert client.responses.retrieve(second.id).id == second.id


def test_anthropic_messages_non_stream_and_stream(gateway: Gateway) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0) as claude:
        message = claude.messages.create(
            model=gateway.group, max_tokens=8, system="Be brief.",
            messages=[{"role": "user", "content": "hello the kalo mira"}],
        )  # fmt: skip
        assert message.type == "message" and message.content[0].type == "text"
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8
        events = list(
            claude.messages.create(
                model=gateway.group, max_tokens=8, stream=True,
                messages=[{"role": "user", "content": "hello the kalo mira"}],
            )
        )  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]


@pytest.mark.parametrize(
    ("path", "body", "anthropic_format"),
    [
        ("/v1/responses", b'{"model": "auto", "input": 3}', False),
        ("/v1/responses", b'{"model": "auto", "input": "x", "background": true}', False),
        ("/v1/messages", b'{"model": "auto", "messages": []}', True),
        ("/v1/messages", b"{", True),
        ("/v1/embeddings", b'{"model": "auto"}', False),
    ],
)
def test_bad_input_gets_each_apis_error_format(
    gateway: Gateway, path: str, body: bytes, anthropic_format: bool
) -> None:
    # JSON's content type, as the SDKs send it (without it the gateway refuses with 415 first)
    headers = {"content-type": "application/json"}
    reply = httpx.post(gateway.url + path, content=body, headers=headers, timeout=30)
    assert reply.status_code == 400
    data = reply.json()
    if anthropic_format:
        assert data["type"] == "error" and data["error"]["type"] == "invalid_request_error"
    else:
        assert data["error"]["type"] == "invalid_request_error" and "param" in data["error"]


@dataclass
class EmbedStack:
    server: VllmServer
    gateway_url: str


@pytest.fixture(scope="module")
def embed_stack(
    request: pytest.FixtureRequest, vllm_tier: VllmTier, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbedStack]:
    report = request.config.stash[REPORT_KEY]
    work = tmp_path_factory.mktemp("embed")
    with report.timings.measure("start a pooling vLLM server (embeddings)"):
        server = start_vllm(vllm_tier.python, vllm_tier.model_dir, EMBED, work)
    process: ManagedProcess | None = None
    try:
        config = gateway_config([*vllm_tier.servers.values(), server], "auto")
        backends = config["backends"]
        assert isinstance(backends, list)
        for backend in backends:
            if backend["id"] == EMBED.name:
                backend["apis"] = ["embeddings", "score", "rerank"]
        process, url = start_gateway(config, work)
        yield EmbedStack(server, url)
    finally:
        if process is not None:
            process.stop(grace_s=15.0)
        server.process.stop()


def test_embeddings_through_the_gateway_to_vllms_pooling_runner(embed_stack: EmbedStack) -> None:
    with openai.OpenAI(base_url=embed_stack.gateway_url + "/v1", api_key="x", max_retries=0) as oai:
        raw = oai.embeddings.with_raw_response.create(model="auto", input=["hello kalo", "mira"])
    result = raw.parse()
    assert raw.headers[BACKEND] == EMBED.name  # the group's only backend that embeds
    assert len(result.data) == 2 and len(result.data[0].embedding) == 128  # hidden size
    assert math.isclose(sum(x * x for x in result.data[0].embedding), 1.0, rel_tol=1e-3)
    assert result.usage.prompt_tokens > 0
    rerank = httpx.post(
        embed_stack.gateway_url + "/v1/rerank",
        json={"model": "auto", "query": "hello kalo", "documents": ["hello kalo", "mira"]},
        timeout=60,
    )
    assert rerank.status_code == 200 and rerank.json()["results"][0]["index"] == 0
    chat = httpx.post(
        embed_stack.gateway_url + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=60,
    )
    assert chat.status_code == 200 and chat.headers[BACKEND] != EMBED.name
