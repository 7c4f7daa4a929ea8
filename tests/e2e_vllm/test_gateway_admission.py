"""Over-length prompts are refused by the gateway with 400 and never reach vLLM.

vLLM counts every HTTP request it answers, 4xx included (`http_requests_total`), so an
unchanged count proves the request never got there, whoever would have rejected it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from .conftest import Gateway, VllmTier
from .metrics import sample_sum, scrape
from .waits import poll_until
from .workload import filler

pytestmark = pytest.mark.vllm

# ~3,000 words: thousands of tokens and ~17,000 characters, over every backend's limit (1,024).
LONG_TEXT = filler(3000)
INFERENCE_HANDLERS = ("/v1/chat/completions", "/v1/completions")


def vllm_request_counts(tier: VllmTier) -> dict[str, tuple[float, float]]:
    """Per backend: (HTTP requests to the inference routes, prompt tokens processed)."""
    counts = {}
    for name, server in tier.servers.items():
        text = scrape(server.url)
        http = sum(sample_sum(text, "http_requests_total", handler=h) for h in INFERENCE_HANDLERS)
        counts[name] = (http, sample_sum(text, "vllm:prompt_tokens_total"))
    return counts


def one_long_message(client: openai.OpenAI, model: str) -> object:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": LONG_TEXT}], max_tokens=4
    )


def long_later_message(client: openai.OpenAI, model: str) -> object:
    messages: list[Any] = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "the kalo mira"},
        {"role": "assistant", "content": "mira"},
        {"role": "user", "content": LONG_TEXT},
    ]
    return client.chat.completions.create(model=model, messages=messages, max_tokens=4)


def long_completion_prompt(client: openai.OpenAI, model: str) -> object:
    return client.completions.create(model=model, prompt=LONG_TEXT, max_tokens=4)


@pytest.mark.parametrize(
    "send", [one_long_message, long_later_message, long_completion_prompt], ids=lambda f: f.__name__
)
def test_overlength_prompt_is_rejected_by_the_gateway_before_vllm(
    client: openai.OpenAI,
    gateway: Gateway,
    vllm_tier: VllmTier,
    send: Callable[[openai.OpenAI, str], object],
) -> None:
    before = vllm_request_counts(vllm_tier)

    with pytest.raises(openai.BadRequestError) as rejected:
        send(client, gateway.group)

    assert rejected.value.status_code == 400
    assert vllm_request_counts(vllm_tier) == before


def test_the_request_counter_does_move_for_a_prompt_that_fits(
    client: openai.OpenAI, gateway: Gateway, vllm_tier: VllmTier
) -> None:
    # Control for the test above: the counter it watches does count forwarded requests.
    before = vllm_request_counts(vllm_tier)

    client.completions.create(model=gateway.group, prompt="the kalo mira", max_tokens=2)

    def moved(now: dict[str, tuple[float, float]]) -> bool:
        return sum(now[n][0] - before[n][0] for n in now) == 1.0

    poll_until(lambda: vllm_request_counts(vllm_tier), moved, timeout_s=15)
