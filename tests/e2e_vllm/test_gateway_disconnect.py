"""A client that goes away mid-stream makes the gateway close its upstream, and vLLM aborts."""

from __future__ import annotations

import itertools

import openai
import pytest

from .conftest import Gateway, VllmTier
from .metrics import sample_sum, scrape
from .waits import poll_until

pytestmark = pytest.mark.vllm


def finished(tier: VllmTier, backend: str, reason: str) -> float:
    text = scrape(tier.servers[backend].url)
    return sample_sum(text, "vllm:request_success_total", finished_reason=reason)


def test_client_disconnect_mid_stream_aborts_the_vllm_request(
    client: openai.OpenAI, gateway: Gateway, vllm_tier: VllmTier
) -> None:
    before = {n: (finished(vllm_tier, n, "abort"), finished(vllm_tier, n, "length")) for n in
              vllm_tier.servers}  # fmt: skip

    # 400 tokens without EOS takes seconds on CPU; we leave after three chunks.
    with client.chat.completions.with_streaming_response.create(
        model=gateway.group,
        messages=[{"role": "user", "content": "the kalo mira"}],
        max_tokens=400,
        temperature=0.0,
        stream=True,
        extra_body={"ignore_eos": True},
    ) as response:
        backend = response.headers.get("x-quantroute-backend")
        first = list(itertools.islice(response.parse(), 3))
    # Leaving the block closed the connection to the gateway with the stream unfinished.

    assert len(first) == 3
    assert backend in vllm_tier.servers, f"x-quantroute-backend={backend!r}"
    aborts_before, lengths_before = before[backend]
    poll_until(
        lambda: finished(vllm_tier, backend, "abort"),
        lambda aborts: aborts == aborts_before + 1,
        timeout_s=30,
    )
    assert finished(vllm_tier, backend, "length") == lengths_before
