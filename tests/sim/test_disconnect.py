"""A client that goes away aborts its request in the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from quantroute.sim.fleet import SimFleet

from .conftest import fleet_config
from .test_metrics import scrape, value

LONG_PROMPT = "Count to three thousand."
LONG_KEY = {LONG_PROMPT: ("reasoning", "step " * 3000 + "= 3000")}
BODY = {
    "model": "llama3-8b-awq",
    "messages": [{"role": "user", "content": LONG_PROMPT}],
    "max_tokens": 3000,
}
ABORT_TIMEOUT_S = 30.0


@pytest.fixture
async def slow_fleet() -> AsyncIterator[SimFleet]:
    # Real time: the 3,000 tokens take tens of seconds. An engine that falls behind the wall
    # clock (its process starved on a loaded machine) catches up in a burst, and at 5x that
    # burst could end the stream before the closed connection was seen (CI timed out once).
    async with SimFleet(fleet_config(time_scale=1), answer_key=LONG_KEY) as running:
        yield running


async def wait_for_abort(http: httpx.AsyncClient, fleet: SimFleet) -> dict[str, float]:
    # bounded in time, not in polls: on a loaded machine 200 scrapes took less time than the
    # engine needs to see the closed connection (it notices at its next token)
    deadline = asyncio.get_running_loop().time() + ABORT_TIMEOUT_S
    seen: dict[str, float] = {}
    while asyncio.get_running_loop().time() < deadline:
        fams = await scrape(http, fleet.urls["awq"])
        seen = {
            reason: value(fams, "vllm:request_success_total", finished_reason=reason)
            for reason in ("abort", "stop", "length")
        }
        seen["running"] = value(fams, "vllm:num_requests_running")
        if seen["abort"] >= 1:
            return {
                "aborted": seen["abort"],
                "running": seen["running"],
                "kv": value(fams, "vllm:kv_cache_usage_perc"),
                "stopped": seen["stop"],
            }
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"the request was not aborted within {ABORT_TIMEOUT_S} s; last seen {seen}"
    )


async def test_disconnect_mid_stream_aborts(slow_fleet: SimFleet, http: httpx.AsyncClient) -> None:
    url = slow_fleet.urls["awq"] + "/v1/chat/completions"
    async with http.stream("POST", url, json={**BODY, "stream": True}) as response:
        received: list[str] = []
        async for line in response.aiter_lines():
            if line:
                received.append(line)
            if len(received) == 4:
                break
        fams = await scrape(http, slow_fleet.urls["awq"])
        assert value(fams, "vllm:num_requests_running") == 1
        assert value(fams, "vllm:kv_cache_usage_perc") > 0
    assert received[0].startswith("data: ")
    after = await wait_for_abort(http, slow_fleet)
    assert after == {"aborted": 1, "running": 0, "kv": 0, "stopped": 0}
    assert not slow_fleet.engines["awq"].has_work()


async def test_disconnect_while_waiting_for_a_whole_answer_aborts(
    slow_fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    url = slow_fleet.urls["awq"] + "/v1/chat/completions"
    with pytest.raises(httpx.ReadTimeout):
        await http.post(url, json=BODY, timeout=0.3)
    after = await wait_for_abort(http, slow_fleet)
    assert after == {"aborted": 1, "running": 0, "kv": 0, "stopped": 0}
    assert not slow_fleet.engines["awq"].has_work()


async def test_fleet_stops_with_a_stream_in_flight(http: httpx.AsyncClient) -> None:
    fleet = SimFleet(fleet_config(time_scale=5), answer_key=LONG_KEY)
    async with fleet:
        url = fleet.urls["awq"] + "/v1/chat/completions"
        async with http.stream("POST", url, json={**BODY, "stream": True}) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
            await fleet.aclose()
            rest = [line async for line in lines if line]
    assert "data: [DONE]" not in rest  # cut short, as when vLLM shuts down
    assert not fleet.engines["awq"].has_work()
    with pytest.raises(httpx.ConnectError):
        await http.get(fleet.urls["awq"] + "/health")
