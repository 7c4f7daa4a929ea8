"""Retries before the first byte, client disconnects, stale and down backends, herding, KV pressure."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from quantroute.testing.fake_backend import FakeState, async_wait_until, wait_until

from .conftest import FleetFactory

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def test_5xx_before_first_byte_is_retried_on_next_backend(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {
            "a": FakeState(served_model_name="a", fail_status=500, fail_times=-1),
            "b": FakeState(served_model_name="b"),
        },
        backend_overrides={
            "b": {"gpu_cost_per_hour": 50.0}
        },  # a looks cheaper, so it is tried first
        policy={"tie_tolerance": 0.0},
        # after a failure a backend is avoided for a moment (passive health); not the subject here
        resilience={"outlier_detection": {"suspect_s": 0}},
    )
    for stream in (False, True):
        raw = fleet.client().chat.completions.with_raw_response.create(
            model="auto", messages=MSG, max_tokens=2, stream=stream
        )
        assert raw.headers["x-quantroute-backend"] == "b"
    assert fleet.metric("quantroute_retries_total", backend="a") == 2


@pytest.mark.parametrize("stream", [False, True])
def test_connect_error_before_the_first_byte_is_retried_on_the_next_backend(
    make_fleet: FleetFactory, stream: bool
) -> None:
    """a's /metrics answer (so it is fresh and ranked first) but its API drops every request."""
    fleet = make_fleet(
        {
            "a": FakeState(served_model_name="a", drop_requests=True),
            "b": FakeState(served_model_name="b"),
        },
        backend_overrides={"b": {"gpu_cost_per_hour": 50.0}},  # a looks cheaper: tried first
        policy={"tie_tolerance": 0.0},
    )
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=2, stream=stream
    )
    assert raw.headers["x-quantroute-backend"] == "b"
    assert len(fleet.backends["a"].state.received) == 1  # a was really tried
    assert fleet.metric("quantroute_retries_total", backend="a") == 1
    assert wait_until(lambda: all(r["in_flight"]["requests"] == 0 for r in fleet.admin().values()))


def test_no_reachable_backend_is_a_502_whose_log_line_names_each_attempt(
    make_fleet: FleetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet(
        {k: FakeState(served_model_name=k, drop_requests=True) for k in ("a", "b")},
        policy={"retries": 1},
    )
    with (
        caplog.at_level(logging.WARNING, logger="quantroute.proxy"),
        pytest.raises(openai.APIStatusError) as caught,
    ):
        fleet.client().chat.completions.create(model="auto", messages=MSG, max_tokens=1)
    assert caught.value.status_code == 502
    error = caught.value.response.json()["error"]
    assert error["code"] == "upstream_unavailable" and error["type"] == "upstream_error"
    # the body names no backend, URL or library error: those are logged under the request id
    rid = caught.value.response.headers["x-request-id"]
    assert error["request_id"] == rid and rid in error["message"]
    assert "127.0.0.1" not in error["message"] and "Error" not in error["message"]
    line = next(r.getMessage() for r in caplog.records if rid in r.getMessage())
    attempts = line.split("no backend reachable: ", 1)[1].split("; ")
    assert sorted(a.split(":")[0] for a in attempts) == ["a", "b"], line
    assert [len(fleet.backends[k].state.received) for k in ("a", "b")] == [1, 1]
    assert fleet.admin()["a"]["in_flight"]["requests"] == 0
    assert fleet.admin()["b"]["in_flight"]["requests"] == 0


def test_the_last_backends_5xx_status_passes_through_its_body_is_logged(
    make_fleet: FleetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Every attempt answered 5xx: the client gets the last backend's status, not a 502, with
    the gateway's body (a backend's 5xx body can carry exception text); the log has the body."""
    fleet = make_fleet(
        {k: FakeState(served_model_name=k, fail_status=503, fail_times=-1) for k in ("a", "b")}
    )
    with caplog.at_level(logging.WARNING, logger="quantroute.proxy"):
        r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG})
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_error"
    assert "injected failure" not in r.text
    rid = r.headers["x-request-id"]
    assert any(rid in m and "injected failure" in m for m in caplog.messages)
    assert [len(fleet.backends[k].state.received) for k in ("a", "b")] == [1, 1]
    assert fleet.metric("quantroute_retries_total") == 1


def test_stream_disconnect_reaches_the_backend(make_fleet: FleetFactory) -> None:
    fleet = make_fleet({"a": FakeState(served_model_name="a", chunk_delay_s=0.05)})
    state = fleet.backends["a"].state
    stream = fleet.client().chat.completions.create(
        model="auto", messages=MSG, max_tokens=200, stream=True
    )
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert wait_until(lambda: state.aborted == 1 and state.active == 0, 5.0)
    assert state.completed == 0
    assert wait_until(lambda: fleet.metric("quantroute_requests_total", status="499") == 1)
    assert fleet.admin()["a"]["in_flight"]["requests"] == 0


async def test_non_stream_disconnect_reaches_the_backend(make_fleet: FleetFactory) -> None:
    fleet = make_fleet({"a": FakeState(served_model_name="a", header_delay_s=5.0)})
    state = fleet.backends["a"].state
    async with httpx.AsyncClient() as client:
        task = asyncio.create_task(
            client.post(fleet.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG})
        )
        assert await async_wait_until(lambda: bool(state.received))
        task.cancel()
    assert await async_wait_until(lambda: state.aborted == 1)
    assert state.aborted == 1 and state.completed == 0


def test_down_backend_is_skipped_and_recovers(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(policy={"down_after_failures": 2})
    fleet.backends["a"].state.metrics_status = 500
    assert wait_until(lambda: fleet.admin()["a"]["state"] == "down")
    assert fleet.picks(10) == {"b"}
    assert fleet.metric("quantroute_scrape_errors_total", backend="a") >= 2
    fleet.backends["a"].state.metrics_status = 200
    assert wait_until(lambda: fleet.admin()["a"]["state"] == "fresh")


def test_stale_backend_is_never_treated_as_idle(make_fleet: FleetFactory) -> None:
    """a's last scrape said idle and its API still answers, but that news is too old to route on."""
    states = {
        "a": FakeState(served_model_name="a", kv_usage=0.0),
        "b": FakeState(served_model_name="b", kv_usage=0.6),
    }
    policy = {
        "staleness_limit_s": 0.5,
        "down_after_failures": 10_000,
        "metrics_outage": "fail_closed",
    }
    fleet = make_fleet(states, policy=policy)
    assert fleet.picks(5) == {"a"}  # fresh and emptier: a wins
    fleet.backends["a"].state.metrics_status = 500  # scrapes fail; requests still work
    assert wait_until(lambda: fleet.admin()["a"]["state"] == "stale", 5)
    assert fleet.admin()["a"]["metrics"]["kv_cache_usage_perc"] == 0.0  # last values kept, not used
    assert fleet.picks(5) == {"b"}
    fleet.backends["b"].state.metrics_status = 500
    # No fresh backend left: /ready says so but stays 200 (the replica can still answer), and
    # with fail_closed the request gets a 503 naming the stale state.
    assert wait_until(lambda: httpx.get(fleet.url + "/ready").json()["metrics_outage"], 10)
    assert httpx.get(fleet.url + "/ready").status_code == 200
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG})
    assert r.status_code == 503 and "stale" in r.json()["error"]["backends"]["a"][0]


async def test_burst_between_scrapes_spreads_over_backends(make_fleet: FleetFactory) -> None:
    """At the last scrape a looked clearly emptiest; the gateway's own account must spread the burst.

    Every backend holds its answers until the whole burst has arrived, so all 50 decisions see
    the account grow request by request and none sees a request end: the spread is the same
    however the machine schedules the requests."""
    gate = threading.Event()
    kv = {"a": 0.0, "b": 0.3, "c": 0.3}
    states = {
        k: FakeState(served_model_name=k, kv_usage=v, num_gpu_blocks=1000, gate=gate)
        for k, v in kv.items()
    }
    fleet = make_fleet(states, policy={"scrape_interval_s": 30.0, "staleness_limit_s": 60.0})
    client = openai.AsyncOpenAI(base_url=fleet.url + "/v1", api_key="t", max_retries=0)
    body = {"model": "auto", "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient() as http:
        explain = (await http.post(fleet.url + "/v1/route/explain", json=body)).json()
    assert explain["ranked"][0] == "a"  # alone, a request would go to a

    async def one() -> str:
        content = "x" * 800
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": content}], max_tokens=100
        )
        return raw.headers["x-quantroute-backend"]

    def received() -> int:
        return sum(len(s.received) for s in states.values())

    async with client:
        burst = [asyncio.create_task(one()) for _ in range(50)]
        try:
            assert await async_wait_until(lambda: received() == 50, 20.0), received()
        finally:
            gate.set()
        picks = Counter(await asyncio.gather(*burst))
    assert set(picks) == {"a", "b", "c"} and picks["a"] <= 30, picks


def test_kv_pressure_steers_away_and_is_counted(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {
            "a": FakeState(served_model_name="a", kv_usage=0.9),
            "b": FakeState(served_model_name="b", kv_usage=0.2),
        }
    )
    assert fleet.picks(5) == {"b"}
    assert fleet.metric("llm_router_cache_pressure_events_total", model_id="a") == 5
    assert fleet.admin()["a"]["decisions"]["steered_away"] == {"kv_pressure": 5}


def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet(
        {"a": FakeState(served_model_name="a", die_after_chunks=3, chunk_delay_s=0.05)}
    )
    body = {"model": "auto", "messages": MSG, "max_tokens": 50, "stream": True}
    r = httpx.post(fleet.url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200 and r.content.count(b'"delta":{"content"') == 3
    assert b'"error"' in r.content.split(b"\n\n")[-2] and b"failed mid-stream" in r.content
    assert b"127.0.0.1" not in r.content and r.headers["x-request-id"].encode() in r.content
    assert wait_until(lambda: fleet.metric("quantroute_requests_total", status="502") == 1)
    assert fleet.admin()["a"]["in_flight"]["requests"] == 0
