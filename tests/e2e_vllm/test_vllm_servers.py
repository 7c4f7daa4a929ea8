"""The two real vLLM servers themselves, before any gateway: what the other tests rely on."""

from __future__ import annotations

import httpx
import pytest

from .conftest import LARGE_KV, SMALL_KV, VllmTier
from .metrics import has_sample, sample_sum, scrape
from .stack import Variant

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("variant", [SMALL_KV, LARGE_KV], ids=lambda v: v.name)
def test_variant_serves_its_name_and_context_length(vllm_tier: VllmTier, variant: Variant) -> None:
    server = vllm_tier.servers[variant.name]
    models = httpx.get(f"{server.url}/v1/models", timeout=20).json()["data"]

    assert [(m["id"], m["max_model_len"]) for m in models] == [
        (server.variant.name, server.variant.max_model_len)
    ]


def test_small_variant_has_eight_kv_blocks_and_reports_kv_usage(vllm_tier: VllmTier) -> None:
    text = scrape(vllm_tier.servers[SMALL_KV.name].url)

    assert sample_sum(text, "vllm:cache_config_info", num_gpu_blocks="8", block_size="128") == 1.0
    assert has_sample(text, "vllm:kv_cache_usage_perc")
    assert not has_sample(text, "vllm:gpu_cache_usage_perc")  # renamed in newer vLLM
