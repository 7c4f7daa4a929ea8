"""KV-cache pressure on a real vLLM server, seen by the gateway and routed around.

A background load straight to ``tiny-a`` (8 KV blocks of 128 tokens) fills its cache and queues
requests. The gateway only learns this by scraping vLLM's /metrics, so `/admin/backends` must
show the real numbers, long prompts sent to the group must go to ``tiny-b``, and the gateway
must count cache-pressure events for ``tiny-a``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from .conftest import LARGE_KV, SMALL_KV, Gateway, VllmTier
from .metrics import sample_sum, scrape_async
from .waits import apoll_until
from .workload import filler, kv_filling_load

pytestmark = pytest.mark.vllm

FULL = 0.85  # the reference design's "skip the backend above 85% KV usage"
PRESSURE_EVENTS = "llm_router_cache_pressure_events_total"
LONG_PROMPT = filler(150)  # a few hundred tokens: fits both backends' context


async def admin_entry(http: httpx.AsyncClient, backend: str) -> dict[str, Any]:
    response = await http.get("/admin/backends")
    response.raise_for_status()
    entries = {b["id"]: b for b in response.json()["backends"]}
    entry: dict[str, Any] = entries[backend]
    return entry


def under_pressure(entry: dict[str, Any]) -> bool:
    metrics = entry.get("metrics") or {}
    kv = metrics.get("kv_cache_usage_perc")
    return entry.get("state") == "fresh" and kv is not None and kv >= FULL


async def pressure_events(http: httpx.AsyncClient) -> float:
    return sample_sum(await scrape_async(http, ""), PRESSURE_EVENTS, model_id=SMALL_KV.name)


async def vllm_idle(url: str) -> bool:
    async with httpx.AsyncClient(timeout=20) as http:
        text = await scrape_async(http, url)
    busy = sum(sample_sum(text, f"vllm:num_requests_{s}") for s in ("running", "waiting"))
    return busy == 0


async def route_long_prompts(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI, group: str, wanted: int
) -> list[str | None]:
    """Backends chosen for long prompts sent while the gateway saw tiny-a full before and after.

    Bounded: at most 40 attempts.
    """
    chosen: list[str | None] = []
    for _ in range(40):
        if len(chosen) == wanted:
            break
        if not under_pressure(await admin_entry(http, SMALL_KV.name)):
            await asyncio.sleep(0.25)
            continue
        raw = await client.chat.completions.with_raw_response.create(
            model=group, messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=1
        )
        if under_pressure(await admin_entry(http, SMALL_KV.name)):
            chosen.append(raw.headers.get("x-quantroute-backend"))
    return chosen


async def test_kv_pressure_is_scraped_and_long_prompts_avoid_the_full_backend(
    async_client: openai.AsyncOpenAI, gateway: Gateway, vllm_tier: VllmTier
) -> None:
    small_url = vllm_tier.servers[SMALL_KV.name].url
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        await apoll_until(lambda: admin_entry(http, SMALL_KV.name), _fresh, timeout_s=30)
        events_before = await pressure_events(http)

        async with kv_filling_load(small_url, SMALL_KV.name, workers=24, max_seconds=150):
            seen = await apoll_until(
                lambda: admin_entry(http, SMALL_KV.name), _full_and_queued, timeout_s=90
            )
            chosen = await route_long_prompts(http, async_client, gateway.group, wanted=3)

        await apoll_until(lambda: vllm_idle(small_url), bool, timeout_s=120, interval_s=1.0)
        events_after = await pressure_events(http)

    metrics = seen["metrics"]
    assert (metrics["num_gpu_blocks"], metrics["block_size"]) == (8, 128)  # tiny-a's real cache
    assert chosen == [LARGE_KV.name] * 3
    assert events_after > events_before


def _fresh(entry: dict[str, Any]) -> bool:
    return entry.get("state") == "fresh"


def _full_and_queued(entry: dict[str, Any]) -> bool:
    waiting = (entry.get("metrics") or {}).get("num_requests_waiting")
    return under_pressure(entry) and waiting is not None and waiting >= 1
