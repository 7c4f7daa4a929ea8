"""A client that hangs up once it has the whole stream is not a client that left mid-answer.

The fake backend sends its last event (``data: [DONE]``) and then keeps its connection open
until the test releases it, so the client always has the whole answer and closes before the
gateway reads the backend's end: the order that, at random, made a finished stream count as a
499 (no latency sample, no usage, a "client gone" in the metrics and the access log).
"""

from __future__ import annotations

import threading

import httpx

from quantroute.testing.fake_backend import FakeState, wait_until

from .conftest import FleetFactory

BODY = {
    "model": "auto",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
    "stream": True,
}


def read_to_done(url: str, body: dict[str, object]) -> bytes:
    """Read the stream up to its ``[DONE]`` event, then close the connection at once."""
    seen = b""
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            seen += chunk
            if seen.endswith(b"data: [DONE]\n\n"):
                break
    return seen


def test_a_client_closing_after_the_last_event_leaves_a_whole_answer(
    make_fleet: FleetFactory,
) -> None:
    linger = threading.Event()
    fleet = make_fleet({"a": FakeState(served_model_name="a", linger=linger)})
    try:
        for usage in (False, True):  # the gateway's own usage event stripped, or the client's
            body = {**BODY, "stream_options": {"include_usage": True}} if usage else BODY
            seen = read_to_done(fleet.url + "/v1/chat/completions", body)
            assert seen.count(b"data: ") >= 5
        # the gateway noticed both clients leaving while the backend still held its connection
        done = lambda: fleet.metric("quantroute_requests_total", backend="a", status="200") == 2  # noqa: E731
        assert wait_until(done, 10), fleet.metric(
            "quantroute_requests_total", backend="a", status="499"
        )
        assert fleet.metric("quantroute_requests_total", backend="a", status="499") == 0
        assert fleet.metric("quantroute_completion_tokens_total", backend="a") == 8
        assert fleet.admin()["a"]["latency"]["ttft_samples"] == 2
    finally:
        linger.set()


def test_a_client_leaving_before_the_last_event_still_counts_as_gone(
    make_fleet: FleetFactory,
) -> None:
    linger = threading.Event()
    fleet = make_fleet({"a": FakeState(served_model_name="a", linger=linger, chunk_delay_s=0.2)})
    try:
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", fleet.url + "/v1/chat/completions", json=BODY) as r,
        ):
            next(r.iter_raw())  # the first event, then gone
        gone = lambda: fleet.metric("quantroute_requests_total", backend="a", status="499") == 1  # noqa: E731
        assert wait_until(gone, 10)
        assert fleet.metric("quantroute_requests_total", backend="a", status="200") == 0
    finally:
        linger.set()
