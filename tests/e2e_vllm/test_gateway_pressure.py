"""KV-cache pressure on a real vLLM server, seen by the gateway and routed around.

A background load sent straight to ``tiny-a`` (8 KV blocks of 128 tokens, 7 usable) fills its
cache. The gateway learns this only by scraping vLLM's /metrics: `/admin/backends` must show the
real numbers, long prompts for the group must go to ``tiny-b`` (which the gateway's config
otherwise ranks below the cheaper ``tiny-a``), and the gateway must count cache-pressure events
for ``tiny-a`` on its own /metrics.

The module runs its own ``tiny-a`` with the model in vLLM's engine-core process (see
``Variant.in_process``: with vLLM's CPU default the load left the cache empty most of the time
and a run could see no full scrape at all) beside the tier's ``tiny-b``, and its own gateway in
front of the two: fresh state (no in-flight accounts, learned latencies or passive health carried
over from the tier's earlier tests) and a 2 s scrape interval, so a prompt sent between two reads
of /admin/backends usually sees one scrape (see :func:`route_while`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from .conftest import GROUP, LARGE_KV, SMALL_KV, Gateway, VllmTier
from .metrics import sample_sum, scrape_async
from .stack import VllmServer, gateway_config, start_gateway, start_vllm
from .waits import apoll_until
from .workload import filler, one_block_load

pytestmark = pytest.mark.vllm

PRESSURE_EVENTS = "llm_router_cache_pressure_events_total"
LONG_PROMPT = filler(150)  # a few hundred tokens: fits both backends, ~20% of tiny-a's cache
SCRAPE_INTERVAL_S = 2.0
Entry = dict[str, Any]
Routed = tuple[str | None, str]


@dataclass(frozen=True)
class Pressure:
    gateway: Gateway
    small: VllmServer
    """This module's ``tiny-a``, the server the load fills."""


@pytest.fixture(scope="module")
def pressure(vllm_tier: VllmTier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pressure]:
    work = tmp_path_factory.mktemp("pressure")
    small = start_vllm(
        vllm_tier.python, vllm_tier.model_dir, dataclasses.replace(SMALL_KV, in_process=True), work
    )
    try:
        servers = [small, vllm_tier.servers[LARGE_KV.name]]
        config = gateway_config(servers, GROUP, scrape_interval_s=SCRAPE_INTERVAL_S)
        process, url = start_gateway(config, work)
        try:
            yield Pressure(Gateway(url=url, process=process, config=config, group=GROUP), small)
        finally:
            process.stop(grace_s=15.0)
    finally:
        small.process.stop()


@pytest.fixture
def gateway(pressure: Pressure) -> Gateway:
    """This module's gateway (overrides the session's, and so the clients' base URL)."""
    return pressure.gateway


def kv(entry: Entry) -> float:
    value = (entry.get("metrics") or {}).get("kv_cache_usage_perc")
    return -1.0 if value is None or entry.get("state") != "fresh" else float(value)


def full_and_queued(entry: Entry) -> bool:
    waiting = (entry.get("metrics") or {}).get("num_requests_waiting")
    return kv(entry) >= 0.85 and waiting is not None and waiting >= 1


def mostly_full(entry: Entry) -> bool:
    """5 or 6 of 7 blocks: under the hard ceiling, over the pressure threshold with a long prompt."""
    return 0.7 <= kv(entry) < 0.95


async def admin_entry(http: httpx.AsyncClient, backend: str = SMALL_KV.name) -> Entry:
    response = await http.get("/admin/backends")
    response.raise_for_status()
    entry: Entry = {b["id"]: b for b in response.json()["backends"]}[backend]
    return entry


async def pressure_events(http: httpx.AsyncClient) -> float:
    return sample_sum(await scrape_async(http, ""), PRESSURE_EVENTS, model_id=SMALL_KV.name)


async def send_long_prompt(client: openai.AsyncOpenAI, group: str) -> tuple[str | None, str]:
    raw = await client.chat.completions.with_raw_response.create(
        model=group, messages=[{"role": "user", "content": LONG_PROMPT}], max_tokens=1
    )
    headers = raw.headers
    return headers.get("x-quantroute-backend"), headers.get("x-quantroute-decision", "")


@dataclass
class Routing:
    """What :func:`route_while` sent and saw."""

    kept: list[Routed] = field(default_factory=list)
    """Prompts decided on a scrape for which ``holds`` was true."""
    seen: list[float] = field(default_factory=list)
    """Every KV usage read from /admin/backends, for the failure message."""


def steered_by_kv(decision: str) -> bool:
    return f"{SMALL_KV.name}!kv_ceiling" in decision or f"{SMALL_KV.name}!kv_pressure" in decision


async def route_while(
    http: httpx.AsyncClient,
    client: openai.AsyncOpenAI,
    group: str,
    holds: Callable[[Entry], bool],
    wanted: int = 3,
    timeout_s: float = 60.0,
) -> Routing:
    """Route long prompts, keeping those whose decision saw a scrape for which `holds` was true.

    vLLM's usage is a sawtooth under this load (requests end and the next ones are admitted), so
    a scrape can land between two reads of /admin/backends. The decision for a prompt sent
    between a read showing scrape n and a read showing scrape m used scrape n, m or one between.
    A prompt is kept when m <= n + 1 and `holds` is true of both reads: whichever scrape the
    decision used, `holds` was true of it. That is exact, not a matter of timing; timing only
    decides how many prompts are kept. Bounded: at most 120 tries and ``timeout_s`` of wall
    time; stops once ``wanted`` are kept.
    """
    routing = Routing()
    deadline = time.monotonic() + timeout_s
    for _ in range(120):
        if len(routing.kept) == wanted or time.monotonic() > deadline:
            break
        before = await admin_entry(http)
        routing.seen.append(kv(before))
        if not holds(before):
            await asyncio.sleep(0.1)
            continue
        routed = await send_long_prompt(client, group)
        after = await admin_entry(http)
        routing.seen.append(kv(after))
        if after["scrapes"] - before["scrapes"] <= 1 and holds(after):
            routing.kept.append(routed)
    return routing


async def vllm_idle(url: str) -> bool:
    async with httpx.AsyncClient(timeout=20) as http:
        text = await scrape_async(http, url)
    busy = sum(sample_sum(text, f"vllm:num_requests_{s}") for s in ("running", "waiting"))
    return busy == 0


async def settle(http: httpx.AsyncClient, vllm_url: str) -> None:
    await apoll_until(lambda: vllm_idle(vllm_url), bool, timeout_s=90, interval_s=1.0)
    await apoll_until(lambda: admin_entry(http), lambda e: kv(e) == 0.0, timeout_s=30)


async def test_full_kv_cache_is_scraped_and_long_prompts_go_elsewhere(
    async_client: openai.AsyncOpenAI, gateway: Gateway, pressure: Pressure
) -> None:
    small_url = pressure.small.url
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        await settle(http, small_url)
        idle_choice, _ = await send_long_prompt(async_client, gateway.group)
        events_before = await pressure_events(http)

        async with one_block_load(small_url, SMALL_KV.name, workers=24, max_seconds=150) as load:
            seen = await apoll_until(lambda: admin_entry(http), full_and_queued, timeout_s=60)
            routing = await route_while(http, async_client, gateway.group, lambda e: kv(e) >= 0.85)
            during = str(load)

        await settle(http, small_url)
        events_after = await pressure_events(http)

    assert idle_choice == SMALL_KV.name  # the control: with room, the cheap backend wins
    metrics = seen["metrics"]
    assert (metrics["num_gpu_blocks"], metrics["block_size"]) == (8, 128)  # tiny-a's real cache
    # Every prompt decided on a scrape that showed the cache full went to the other backend, and
    # its decision names the KV filter that turned tiny-a away.
    kept = routing.kept
    assert kept, (
        f"no prompt was decided on one full-cache scrape; KV seen: {routing.seen}, {during}"
    )
    assert {backend for backend, _ in kept} == {LARGE_KV.name}, kept
    assert all(steered_by_kv(decision) for _, decision in kept), kept
    assert events_after > events_before, f"{PRESSURE_EVENTS} did not rise; decisions: {kept}"


async def test_mostly_full_kv_cache_counts_pressure_events_for_long_prompts(
    async_client: openai.AsyncOpenAI, gateway: Gateway, pressure: Pressure
) -> None:
    small_url = pressure.small.url
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        await settle(http, small_url)
        events_before = await pressure_events(http)

        async with one_block_load(small_url, SMALL_KV.name, workers=6, max_seconds=150) as load:
            await apoll_until(lambda: admin_entry(http), mostly_full, timeout_s=60)
            routing = await route_while(http, async_client, gateway.group, mostly_full)
            during = str(load)

        await settle(http, small_url)
        events_after = await pressure_events(http)

    # Every prompt decided on a scrape that showed 5 or 6 of 7 blocks in use went to the other
    # backend. How many such scrapes come depends on the load's sawtooth (a CI run kept two, then
    # saw the cache drain), so the test asks for at least one and checks all it kept.
    routed = routing.kept
    why = (routed, routing.seen, during)
    assert routed, f"no prompt was decided on one mostly-full scrape: {why}"
    assert {backend for backend, _ in routed} == {LARGE_KV.name}, why
    assert events_after > events_before, f"{PRESSURE_EVENTS} did not rise; decisions: {routed}"
