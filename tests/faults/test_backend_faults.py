"""Backends that fail: the gateway answers cleanly, ejects what is broken, and leaks nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx
import pytest

from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.faults import (
    LAST_CHUNK,
    SSE_HEAD,
    Behaviour,
    RawServer,
    Request,
    answer,
    chat_chunk,
    chunk,
    endless_event,
    huge_body,
    never_answer,
    raw_bytes,
    server_error,
    stream_then_reset,
)

from .conftest import FleetFactory

CHEAP_A = {"b": {"gpu_cost_per_hour": 5.0}, "c": {"gpu_cost_per_hour": 5.0}}
"""``a`` is the cheapest backend, so every decision tries it first while it is admitted."""


def error_of(r: httpx.Response) -> dict[str, object]:
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    return dict(error)


def test_500_with_healthy_metrics_is_ejected_without_retries(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {"a": RawServer(server_error()), "b": FakeState(served_model_name="fake-model")},
        policy={"retries": 0},
        overrides={"b": {"gpu_cost_per_hour": 5.0}},
        resilience={"outlier_detection": {"consecutive_failures": 5, "base_ejection_s": 60}},
    )
    statuses = Counter(fleet.post({}).status_code for _ in range(40))
    assert statuses == {500: 5, 200: 35}  # the fifth 500 ejected it; nothing since
    row = fleet.admin()["a"]["passive_health"]
    assert row["ejected"] and row["reason"] == "consecutive_failures"
    assert (
        fleet.metric("quantroute_ejections_total", backend="a", reason="consecutive_failures") == 1
    )
    explain = httpx.post(
        fleet.url + "/v1/route/explain",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    ).json()
    rejected = {c["backend"]: c["reasons"] for c in explain["candidates"] if not c["admitted"]}
    assert "ejection" in json.dumps(rejected["a"])
    fleet.assert_no_leaks()


def test_500_with_retries_costs_few_extra_upstream_calls(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {
            "a": RawServer(server_error()),
            "b": FakeState(served_model_name="fake-model"),
            "c": FakeState(served_model_name="fake-model"),
        },
        policy={"retries": 1},
        overrides=CHEAP_A,
    )
    for stream in (False, True):
        for _ in range(20):
            r = fleet.post({"stream": stream})
            assert r.status_code == 200, r.text
    calls = {k: fleet.upstream_calls(k) for k in "abc"}
    assert calls["a"] == 5 and calls["b"] + calls["c"] == 40, calls
    assert fleet.metric("quantroute_retries_total") == 5
    fleet.assert_no_leaks()


def test_never_answering_backend_times_out_without_a_retry(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {"a": RawServer(never_answer), "b": FakeState(served_model_name="fake-model")},
        policy={
            "retries": 1,
            "upstream_timeouts": {
                "first_byte_s": 0.5,
                "nonstream_base_s": 0.5,
                "nonstream_per_token_s": 0.01,
            },
        },
        overrides={"b": {"gpu_cost_per_hour": 5.0}},
        resilience={"outlier_detection": {"suspect_s": 0}},  # a stays first choice
    )
    for stream in (False, True):
        r = fleet.post({"stream": stream, "max_tokens": 10})
        assert r.status_code == 504, r.text
        assert error_of(r)["code"] == "upstream_timeout"
    assert fleet.upstream_calls("b") == 0  # a timed-out request was sent: b must not redo it
    assert fleet.metric("quantroute_upstream_outcomes_total", backend="a", outcome="timeout") == 2
    fleet.assert_no_leaks()


def test_non_stream_deadline_grows_with_max_tokens(make_fleet: FleetFactory) -> None:
    """vLLM sends nothing until a non-streamed generation is done: its deadline follows max_tokens."""
    fleet = make_fleet(
        {"a": FakeState(served_model_name="fake-model", chunk_delay_s=0.05)},  # 20 tokens/s
        policy={
            "upstream_timeouts": {
                "first_byte_s": 1.0,
                "nonstream_base_s": 1.0,
                "nonstream_per_token_s": 0.1,
            }
        },
    )
    r = fleet.post({"max_tokens": 60})  # 3 s of generation, far beyond first_byte_s
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 60
    r = fleet.post({"max_tokens": 60, "stream": True})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    fleet.assert_no_leaks()


def test_stream_idle_gap_is_bounded(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {"a": RawServer(stream_then_reset(2, delay_s=5.0))},
        policy={"upstream_timeouts": {"stream_idle_s": 0.5}},
    )
    r = fleet.post({"stream": True})
    assert r.status_code == 200
    events = [e for e in r.content.split(b"\n\n") if e]
    assert b'"error"' in events[-1] and b"timeout" in events[-1].lower()
    assert fleet.metric("quantroute_upstream_outcomes_total", backend="a", outcome="timeout") == 1
    fleet.assert_no_leaks(timeout_s=30)  # the raw backend sleeps 2 × 5 s before it lets go


def test_reset_mid_stream_ends_with_an_error_event(make_fleet: FleetFactory) -> None:
    fleet = make_fleet({"a": RawServer(stream_then_reset(3))})
    r = fleet.post({"stream": True, "max_tokens": 50})
    events = [e for e in r.content.split(b"\n\n") if e]
    assert r.status_code == 200 and len(events) == 4
    assert b'"error"' in events[-1]
    assert wait_until(lambda: fleet.metric("quantroute_requests_total", status="502") == 1)
    assert fleet.metric("quantroute_upstream_outcomes_total", backend="a", outcome="reset") == 1
    fleet.assert_no_leaks()


@pytest.mark.parametrize("stream", [False, True])
def test_unencodable_response_header_is_a_clean_502(make_fleet: FleetFactory, stream: bool) -> None:
    bad = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=\xe2\x98\x83\r\n"
        b"content-length: 14\r\nconnection: close\r\n\r\ndata: [DONE]\n\n"
    )
    fleet = make_fleet({"a": RawServer(raw_bytes(bad))})
    for _ in range(3):
        r = fleet.post({"stream": stream})
        assert r.status_code in (200, 502), r.text
        if r.status_code == 502:
            assert error_of(r)["code"] == "upstream_bad_response"
    fleet.assert_no_leaks()


def test_endless_sse_event_is_cut_at_the_buffer_cap(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {"a": RawServer(endless_event(limit=20 * 1024 * 1024))},
        resilience={"upstream": {"max_sse_event_bytes": 1024 * 1024}},
    )
    for usage in (False, True):  # stripped usage (buffered events) and pass-through
        body = {"stream": True, "stream_options": {"include_usage": usage}}
        r = fleet.post(body)
        assert r.status_code == 200 and len(r.content) < 3 * 1024 * 1024
        assert b"event exceeds" in r.content.split(b"\n\n")[-2]
    assert fleet.metric("quantroute_upstream_outcomes_total", backend="a", outcome="too_large") == 2
    fleet.assert_no_leaks()


def test_huge_non_stream_answer_is_a_502(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {"a": RawServer(huge_body(50 * 1024 * 1024))},
        resilience={"upstream": {"max_body_bytes": 1024 * 1024}},
    )
    r = fleet.post({})
    assert r.status_code == 502 and error_of(r)["code"] == "upstream_response_too_large"
    fleet.assert_no_leaks()


@pytest.mark.parametrize(
    ("metrics", "state"),
    [
        (b"\x00\xff{{{ not prometheus", "fresh"),  # nothing it reads: known to be unknown
        (b'vllm:num_requests_running{engine="0" 1 garbage\n', "down"),  # malformed: fails
        (b'vllm:kv_cache_usage_perc{engine="0"} notanumber\n', "down"),
    ],
)
def test_garbage_metrics_never_route_traffic_there(
    make_fleet: FleetFactory, metrics: bytes, state: str
) -> None:
    fleet = make_fleet(
        {
            "a": RawServer(server_error(), metrics_body=metrics),
            "b": FakeState(served_model_name="fake-model"),
        },
        policy={"down_after_failures": 2},
        overrides={"b": {"gpu_cost_per_hour": 5.0}},
        wait_fresh=False,
    )
    assert wait_until(lambda: fleet.admin()["a"]["state"] == state)
    assert wait_until(lambda: fleet.admin()["b"]["state"] == "fresh")
    assert all(fleet.post({}).status_code == 200 for _ in range(5))
    assert fleet.upstream_calls("a") == 0
    fleet.assert_no_leaks()


def test_metric_schema_self_test_reports_missing_names_once(
    make_fleet: FleetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong port (here: some other exporter) parses fine but has none of vLLM's names."""
    caplog.set_level(logging.WARNING, logger="quantroute")
    other = b"# TYPE node_load1 gauge\nnode_load1 0.5\n"
    fleet = make_fleet(
        {"a": RawServer(server_error(), metrics_body=other), "b": FakeState()},
        wait_fresh=False,
    )
    assert wait_until(lambda: fleet.admin()["a"].get("metric_schema", {}).get("ok") is False)
    schema = fleet.admin()["a"]["metric_schema"]
    assert "vllm:kv_cache_usage_perc" in schema["missing"] and schema["fallback"]
    assert fleet.admin()["b"]["metric_schema"]["ok"] is True
    assert fleet.metric("quantroute_backend_metric_schema_ok", backend="a") == 0
    assert fleet.metric("quantroute_backend_metric_schema_ok", backend="b") == 1
    scrapes = fleet.raws["a"].stats.requests["/metrics"]
    assert wait_until(lambda: fleet.raws["a"].stats.requests["/metrics"] > scrapes + 3)
    said = [
        r for r in caplog.records if "metric schema" in r.getMessage() and "'a'" in r.getMessage()
    ]
    assert len(said) == 1


def test_429_and_503_steer_away_but_never_eject(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {
            "a": FakeState(served_model_name="fake-model", fail_status=429, fail_times=-1),
            "b": FakeState(served_model_name="fake-model"),
        },
        policy={"retries": 0},
        overrides={"b": {"gpu_cost_per_hour": 5.0}},
        resilience={"outlier_detection": {"backpressure_s": 30}},
    )
    first = fleet.post({})
    assert first.status_code == 429  # passed through: the client sees the backpressure
    assert all(fleet.post({}).status_code == 200 for _ in range(10))  # steered to b meanwhile
    health = fleet.admin()["a"]["passive_health"]
    assert not health["ejected"] and health["backpressure_for_s"] > 0
    assert fleet.metric("quantroute_ejections_total", backend="a") == 0
    fleet.assert_no_leaks()


async def test_killed_backend_mid_burst_loses_nothing_before_the_first_byte(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet(
        {
            "a": FakeState(served_model_name="fake-model", chunk_delay_s=0.02),
            "b": FakeState(served_model_name="fake-model", chunk_delay_s=0.02),
        },
        policy={"retries": 1, "down_after_failures": 2},
        resilience={"outlier_detection": {"base_ejection_s": 1.0, "slow_start_s": 1.0}},
    )
    port = fleet.servers["a"].port

    async def one(client: httpx.AsyncClient) -> tuple[int, bytes]:
        body = {
            "model": "auto",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 30,
            "stream": True,
        }
        r = await client.post(fleet.url + "/v1/chat/completions", json=body)
        return r.status_code, r.content

    async with httpx.AsyncClient(timeout=30) as client:
        burst = [asyncio.create_task(one(client)) for _ in range(20)]
        await asyncio.sleep(0.3)
        fleet.servers["a"].stop()  # mid-burst
        after = [asyncio.create_task(one(client)) for _ in range(20)]
        results = await asyncio.gather(*burst, *after)
    assert all(status == 200 for status, _ in results)  # nothing failed before the first byte
    cut = [c for _, c in results if b'"error"' in c]
    assert all(c.rstrip().endswith(b"}") for c in cut)  # a cut stream ends with an error event
    assert all(c.endswith(b"data: [DONE]\n\n") for c in [c for _, c in results[20:]])
    assert wait_until(lambda: fleet.admin()["a"]["state"] == "down")
    # Back on the same port: re-admitted, ramping up from its slow-start weight.
    revived = FakeBackend(fleet.fakes["a"].state)  # an aiohttp app runs on one loop only
    fleet.servers["a"] = ThreadedServer(revived.app, port=port).start()
    assert wait_until(lambda: fleet.admin()["a"]["state"] == "fresh", 10)
    assert wait_until(lambda: fleet.admin()["a"]["passive_health"]["weight"] == 1.0, 10)
    fleet.assert_no_leaks()


def test_a_backend_far_slower_than_its_peers_is_ejected(make_fleet: FleetFactory) -> None:
    """It answers every request, just slowly (a throttled GPU): a latency outlier."""
    fleet = make_fleet(
        {
            "fast": FakeState(served_model_name="fake-model", chunk_delay_s=0.002),
            "slow": FakeState(served_model_name="fake-model", chunk_delay_s=0.06),
        },
        # Spread evenly: near-ties within 1.0, and the scorer left on the prior (with measured
        # latency on, the slow backend would lose its traffic before the ejection rule sees it).
        policy={"tie_tolerance": 1.0, "measured_latency": False},
        resilience={"outlier_detection": {"latency_min_samples": 4, "per_token_floor_s": 0.02}},
    )
    for _ in range(30):
        r = fleet.post({"stream": True, "max_tokens": 10})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        if fleet.admin()["slow"]["passive_health"]["ejected"]:
            break
    health = fleet.admin()["slow"]["passive_health"]
    assert health["ejected"] and health["reason"] == "latency_outlier", health
    assert "time per token" in health["detail"]
    assert not fleet.admin()["fast"]["passive_health"]["ejected"]
    assert fleet.metric("quantroute_ejections_total", backend="slow", reason="latency_outlier") == 1
    fleet.assert_no_leaks()


def held_stream(release: threading.Semaphore) -> Behaviour:
    """A stream that sends one chunk, then holds until ``release`` lets it finish (bounded)."""

    async def behaviour(req: Request, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        model = str(req.json().get("model", "m"))
        w.write(SSE_HEAD + chunk(chat_chunk(model, "first")))
        await w.drain()
        await asyncio.to_thread(release.acquire, True, 30.0)
        w.write(chunk(chat_chunk(model, "", "stop")) + chunk(b"data: [DONE]\n\n") + LAST_CHUNK)
        await w.drain()

    return behaviour


def test_streams_begun_before_a_fault_do_not_reset_its_failure_streak(
    make_fleet: FleetFactory,
) -> None:
    """A success clears the failure streak only for a request sent after the latest failure: a
    stream sent before the backend broke that ends well in the middle of its failures does not
    (it used to: long streams kept a failing backend in service)."""
    release = threading.Semaphore(0)
    a = RawServer(held_stream(release))
    fleet = make_fleet(
        {"a": a, "b": FakeState(served_model_name="fake-model")},
        policy={"retries": 0},
        overrides={"b": {"gpu_cost_per_hour": 5.0}},
        resilience={  # no suspect window: every request tries a while it is admitted
            "outlier_detection": {"consecutive_failures": 3, "base_ejection_s": 60, "suspect_s": 0}
        },
    )
    ok = {"backend": "a", "outcome": "ok"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            streams = [pool.submit(fleet.post, {"stream": True}) for _ in range(2)]
            assert wait_until(lambda: a.stats.requests["/v1/chat/completions"] == 2)
            a.behaviour = server_error()
            assert [fleet.post({}).status_code for _ in range(2)] == [500, 500]
            release.release()  # one stream begun before the fault ends well between failures
            done, _ = wait(streams, timeout=30, return_when=FIRST_COMPLETED)
            assert [f.result().status_code for f in done] == [200]
            assert fleet.post({}).status_code == 500  # the third failure in a row
            row = fleet.admin()["a"]["passive_health"]
            assert row["ejected"] and row["reason"] == "consecutive_failures", row
            assert fleet.metric("quantroute_upstream_outcomes_total", **ok) == 1  # it counted
            assert fleet.post({}).headers["x-quantroute-backend"] == "b"
        finally:
            release.release(2)
        assert all(f.result(timeout=30).status_code == 200 for f in streams)
    fleet.assert_no_leaks()


def test_a_backend_refusing_a_continuation_passes_it_to_the_next(make_fleet: FleetFactory) -> None:
    """A stream breaks on ``a``; the best candidate to continue it, ``b``, answers 500 at once
    (it did no work), so ``c`` continues it within the one continuation a request may use."""
    fleet = make_fleet(
        {
            "a": RawServer(stream_then_reset(3)),
            "b": RawServer(server_error()),
            "c": FakeState(served_model_name="fake-model"),
        },
        overrides={"b": {"gpu_cost_per_hour": 2.0}, "c": {"gpu_cost_per_hour": 5.0}},
        resilience={"outlier_detection": {"enabled": False}},
    )
    r = fleet.post({"stream": True, "max_tokens": 50})
    events = [e for e in r.content.split(b"\n\n") if e]
    assert r.status_code == 200 and events[-1] == b"data: [DONE]", events
    assert not any(b'"error"' in e for e in events), events
    assert b": quantroute continued on c" in events
    continued = {"from": "a", "to": "c", "outcome": "completed"}
    assert fleet.metric("quantroute_continuations_total", **continued) == 1
    refused = {"from": "a", "to": "b", "outcome": "failed"}
    assert fleet.metric("quantroute_continuations_total", **refused) == 1
    fleet.assert_no_leaks()


def test_an_ejection_held_for_want_of_room_is_made_when_the_holder_goes_down(
    make_fleet: FleetFactory,
) -> None:
    """The soak's sequence: ``b`` holds the group's one ejection slot, ``a`` answers 500 and its
    ejection is held back; then no request comes. When ``b``'s scrapes fail (it is down, it
    holds no share), ``a`` is ejected at once, not at its next failure: in the soak traffic
    came in waves, and the next request to ``a`` came 25 s later."""
    b = FakeState(served_model_name="fake-model", fail_status=500, fail_times=-1)
    a = FakeState(served_model_name="fake-model")
    fleet = make_fleet(
        {"a": a, "b": b, "c": FakeState(served_model_name="fake-model")},
        policy={"retries": 0, "down_after_failures": 2},
        overrides={"a": {"gpu_cost_per_hour": 2.0}, "c": {"gpu_cost_per_hour": 5.0}},
        resilience={  # three backends, one slot; no suspect window: the cheapest is tried;
            # a held ejection kept for 60 s, far beyond the test's steps on a loaded machine
            "outlier_detection": {
                "consecutive_failures": 3,
                "base_ejection_s": 60,
                "suspect_s": 0,
                "held_ejection_s": 60,
            }
        },
    )
    assert [fleet.post({}).status_code for _ in range(3)] == [500] * 3  # b, the cheapest
    assert fleet.admin()["b"]["passive_health"]["ejected"]
    a.fail_status, a.fail_times = 500, -1
    assert [fleet.post({}).status_code for _ in range(3)] == [500] * 3  # a, next cheapest
    row = fleet.admin()["a"]["passive_health"]
    assert not row["ejected"] and row["consecutive_failures"] == 3  # held: b has the slot
    assert fleet.metric("quantroute_ejections_suppressed_total", backend="a") == 1
    b.metrics_status = 500  # b's scrapes fail: marked down after two
    assert wait_until(lambda: fleet.admin()["b"]["state"] == "down", 10)
    assert wait_until(lambda: fleet.admin()["a"]["passive_health"]["ejected"], 5)
    assert fleet.upstream_calls("a") == 3  # no request was needed to eject it
    reason = {"backend": "a", "reason": "consecutive_failures"}
    assert fleet.metric("quantroute_ejections_total", **reason) == 1
    r = fleet.post({})
    assert r.status_code == 200 and r.headers["x-quantroute-backend"] == "c"
    fleet.assert_no_leaks()


def test_a_backend_reporting_odd_usage_is_relayed_and_counts_no_tokens(
    make_fleet: FleetFactory,
) -> None:
    """A usage object whose counts are not counts (a string, a negative number, one too large
    for any float): the answer reaches the client as it came, the request is counted, and the
    token counters do not move (a counter never goes down, and nothing raises)."""
    body = (
        b'{"id":"x","object":"chat.completion","model":"fake-model","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":"abc","completion_tokens":-5,"total_tokens":1e400}}'
    )
    fleet = make_fleet({"a": RawServer(answer(200, body))})
    for _ in range(2):
        r = fleet.post({})
        assert r.status_code == 200 and r.content == body

    def counted() -> float:
        return fleet.metric("quantroute_requests_total", backend="a", status="200")

    assert wait_until(lambda: counted() == 2, 10.0, 0.05), counted()
    assert fleet.metric("quantroute_prompt_tokens_total", backend="a") == 0
    assert fleet.metric("quantroute_completion_tokens_total", backend="a") == 0
    fleet.assert_no_leaks()
