"""The OpenAI surface of `quantroute serve` in front of two real vLLM servers.

The official OpenAI client talks to the gateway only; vLLM's own counters tell which backend
really served each request. Outputs are random tokens (random weights), so only shapes,
usage accounting and routing are asserted, never text.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from .conftest import Gateway, VllmTier
from .metrics import sample_sum, scrape
from .waits import poll_until

pytestmark = pytest.mark.vllm

BACKEND_HEADER = "x-quantroute-backend"
MESSAGES: list[Any] = [{"role": "user", "content": "hello the kalo mira"}]
MAX_TOKENS = 8


def finished_requests(tier: VllmTier) -> dict[str, float]:
    """vLLM's finished-request count per backend, all finish reasons together."""
    return {
        name: sample_sum(scrape(server.url), "vllm:request_success_total")
        for name, server in tier.servers.items()
    }


def assert_served_by(tier: VllmTier, before: dict[str, float], backend: str | None) -> None:
    assert backend in tier.servers, f"{BACKEND_HEADER}={backend!r}"
    expected = {name: before[name] + (1.0 if name == backend else 0.0) for name in before}
    poll_until(lambda: finished_requests(tier), lambda now: now == expected, timeout_s=15)


def test_models_lists_the_group(client: openai.OpenAI, gateway: Gateway) -> None:
    ids = {model.id for model in client.models.list()}

    assert gateway.group in ids


def test_chat_completion_is_served_by_the_backend_the_header_names(
    client: openai.OpenAI, vllm_tier: VllmTier, gateway: Gateway
) -> None:
    before = finished_requests(vllm_tier)

    raw = client.chat.completions.with_raw_response.create(
        model=gateway.group, messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    completion = raw.parse()

    assert_served_by(vllm_tier, before, raw.headers.get(BACKEND_HEADER))
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.usage is not None
    assert 1 <= completion.usage.completion_tokens <= MAX_TOKENS
    assert completion.usage.prompt_tokens > 0


def test_completion_is_served_by_the_backend_the_header_names(
    client: openai.OpenAI, vllm_tier: VllmTier, gateway: Gateway
) -> None:
    before = finished_requests(vllm_tier)

    raw = client.completions.with_raw_response.create(
        model=gateway.group, prompt="the kalo mira", max_tokens=MAX_TOKENS
    )
    completion = raw.parse()

    assert_served_by(vllm_tier, before, raw.headers.get(BACKEND_HEADER))
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert completion.usage is not None
    assert 1 <= completion.usage.completion_tokens <= MAX_TOKENS


def stream_options(include_usage: bool | None) -> dict[str, Any]:
    return {} if include_usage is None else {"stream_options": {"include_usage": include_usage}}


@pytest.mark.parametrize("include_usage", [True, False, None], ids=["usage", "no-usage", "unset"])
def test_chat_stream_carries_usage_in_final_chunk_only_when_asked(
    client: openai.OpenAI, gateway: Gateway, include_usage: bool | None
) -> None:
    stream = client.chat.completions.create(
        model=gateway.group,
        messages=MESSAGES,
        max_tokens=MAX_TOKENS,
        stream=True,
        **stream_options(include_usage),
    )
    chunks = list(stream)

    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes in (["length"], ["stop"])
    assert_usage_only_in_last_chunk(chunks, include_usage is True)


@pytest.mark.parametrize("include_usage", [True, False], ids=["usage", "no-usage"])
def test_completion_stream_carries_usage_in_final_chunk_only_when_asked(
    client: openai.OpenAI, gateway: Gateway, include_usage: bool
) -> None:
    stream = client.completions.create(
        model=gateway.group,
        prompt="the kalo mira",
        max_tokens=MAX_TOKENS,
        stream=True,
        **stream_options(include_usage),
    )
    chunks = list(stream)

    assert chunks and all(c.object == "text_completion" for c in chunks)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert finishes in (["length"], ["stop"])
    assert_usage_only_in_last_chunk(chunks, include_usage)


def assert_usage_only_in_last_chunk(chunks: list[Any], asked: bool) -> None:
    if not asked:
        assert [c.usage for c in chunks] == [None] * len(chunks)
        return
    *body, last = chunks
    assert [c.usage for c in body] == [None] * len(body)
    assert last.choices == []
    assert last.usage is not None
    assert 1 <= last.usage.completion_tokens <= MAX_TOKENS
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
