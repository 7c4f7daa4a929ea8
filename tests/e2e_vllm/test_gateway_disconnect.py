"""A client that goes away mid-stream makes the gateway close its upstream, and vLLM aborts.

vLLM 0.32 does not count a request aborted by a client disconnect in
``vllm:request_success_total{finished_reason="abort"}`` (measured: it stays 0), so the abort is
shown by what did not happen: the backend stops generating long before ``max_tokens``. With
``ignore_eos``, a request that runs its course generates exactly ``max_tokens``, so fewer tokens
generated on that server in all proves the abort, whatever else ran there. The count of finished
requests is reported beside it but not held to zero: it moved once in CI, where only a request
from elsewhere (or a count of the abort itself) can move it with fewer tokens than that.

vLLM's CPU build here does not always act on a disconnect in time, whoever disconnects. Measured
with the same request and the same three chunks read: 3 of 30 streams sent straight to vLLM and
3 of 30 through the gateway ran all 480 tokens, each time because vLLM sent not even the
response's headers until its engine had finished; with the server's /metrics read while the
stream was open, 6 of 40 direct streams ran to the end though the client closed after 10 to 191
tokens. CI failed once on such a stream. So the test makes up to five attempts and passes on the
first that stops short; a gateway that never closes its upstream fails all five.
"""

from __future__ import annotations

import itertools
from functools import partial

import openai
import pytest

from .conftest import Gateway, VllmTier
from .metrics import sample_sum, scrape
from .waits import poll_until

pytestmark = pytest.mark.vllm

MAX_TOKENS = 480  # fits both backends with the short prompt; seconds of decoding on CPU
ATTEMPTS = 5


def engine_counts(url: str) -> dict[str, float]:
    text = scrape(url)
    return {
        "finished": sample_sum(text, "vllm:request_success_total"),
        "generated": sample_sum(text, "vllm:generation_tokens_total"),
        "busy": sample_sum(text, "vllm:num_requests_running")
        + sample_sum(text, "vllm:num_requests_waiting"),
    }


def idle_counts(vllm_tier: VllmTier) -> dict[str, dict[str, float]]:
    """Every server's counts once it runs nothing (a running request would add its tokens)."""
    return {
        name: poll_until(partial(engine_counts, s.url), lambda c: c["busy"] == 0, timeout_s=60)
        for name, s in vllm_tier.servers.items()
    }


def test_client_disconnect_mid_stream_aborts_the_vllm_request(
    client: openai.OpenAI, gateway: Gateway, vllm_tier: VllmTier
) -> None:
    tries: list[dict[str, float]] = []
    for _ in range(ATTEMPTS):
        before = idle_counts(vllm_tier)
        with client.chat.completions.with_streaming_response.create(
            model=gateway.group,
            messages=[{"role": "user", "content": "the kalo mira"}],
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            stream=True,
            extra_body={"ignore_eos": True},
        ) as response:
            backend = response.headers.get("x-quantroute-backend")
            first = list(itertools.islice(response.parse(), 3))
        # Leaving the block closed the connection to the gateway with the stream unfinished.

        assert len(first) == 3
        assert backend in vllm_tier.servers, f"x-quantroute-backend={backend!r}"
        url = vllm_tier.servers[backend].url
        after = poll_until(partial(engine_counts, url), lambda c: c["busy"] == 0, timeout_s=60)
        moved = {key: after[key] - before[backend][key] for key in ("finished", "generated")}
        tries.append(moved)
        if moved["generated"] < MAX_TOKENS:
            break
    # The first chunks read include the role chunk, so at least one token was generated.
    assert 1 <= tries[-1]["generated"] < MAX_TOKENS, tries
