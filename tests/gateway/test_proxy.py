"""The proxy path through the official openai client: streams, usage, rewriting, pass-through."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam

from quantroute import __version__
from quantroute.core.model import BackendState
from quantroute.proxy.context import RequestContext
from quantroute.state import store as store_module
from quantroute.testing.fake_backend import FakeState, wait_until

from .conftest import FleetFactory

MSG: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]


def test_non_stream_chat_through_openai_client(make_fleet: FleetFactory) -> None:
    fleet = make_fleet()
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=7
    )
    reply = raw.parse()
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    chosen = raw.headers["x-quantroute-backend"]
    assert chosen in ("a", "b") and "chosen=" in raw.headers["x-quantroute-decision"]
    sent = fleet.backends[chosen].state.received[-1]
    assert sent["model"] == fleet.backends[chosen].state.served_model_name  # group name rewritten
    assert sent["messages"] == MSG and sent["max_tokens"] == 7  # the body arrived, whole
    # The gateway's own headers, not the client's (the openai client sends its own User-Agent
    # and Authorization, and asks for gzip).
    headers = fleet.backends[chosen].state.received_headers[-1]
    assert headers["user-agent"] == f"quantroute/{__version__}"
    assert headers["accept-encoding"] == "identity" and "authorization" not in headers


def test_stream_without_usage_strips_the_usage_the_gateway_asked_for(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet()
    chunks = list(
        fleet.client().chat.completions.create(
            model="auto", messages=MSG, max_tokens=5, stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " tok" * 5
    received = [b.state.received[-1] for b in fleet.backends.values() if b.state.received]
    assert received[0]["stream_options"] == {"include_usage": True}
    assert fleet.metric("quantroute_completion_tokens_total") == 5


def test_stream_with_usage_is_relayed_byte_for_byte(make_fleet: FleetFactory) -> None:
    fleet = make_fleet({"a": FakeState(served_model_name="only")})
    body = {
        "model": "only",
        "messages": MSG,
        "max_tokens": 9,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    direct = httpx.post(fleet.servers["a"].url + "/v1/chat/completions", json=body).content
    via = httpx.post(fleet.url + "/v1/chat/completions", json=body)
    assert via.content == direct and via.headers["content-type"].startswith("text/event-stream")
    assert b'"usage":{' in via.content and via.content.endswith(b"data: [DONE]\n\n")


def test_completions_and_unprefixed_paths(make_fleet: FleetFactory) -> None:
    fleet = make_fleet()
    text = fleet.client().completions.create(model="auto", prompt="Once upon", max_tokens=3)
    assert text.choices[0].text == " tok" * 3
    streamed = list(
        fleet.client().completions.create(model="auto", prompt="x", max_tokens=4, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == " tok" * 4
    r = httpx.post(
        fleet.url + "/chat/completions", json={"model": "auto", "messages": MSG, "max_tokens": 2}
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_models_lists_groups_and_variants(make_fleet: FleetFactory) -> None:
    fleet = make_fleet()
    ids = {m.id for m in fleet.client().models.list()}
    assert ids == {"auto", "model-a", "model-b"}


def test_model_by_served_name_goes_to_that_backend(make_fleet: FleetFactory) -> None:
    fleet = make_fleet()
    for _ in range(5):
        raw = fleet.client().chat.completions.with_raw_response.create(
            model="model-b", messages=MSG, max_tokens=1
        )
        assert raw.headers["x-quantroute-backend"] == "b"


def test_upstream_errors_pass_through(make_fleet: FleetFactory) -> None:
    fleet = make_fleet({"a": FakeState(served_model_name="only", fail_status=422, fail_times=1)})
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "only", "messages": MSG})
    assert r.status_code == 422 and r.json()["error"]["message"] == "injected failure"


def test_the_decision_is_on_metrics_while_its_request_waits_for_the_backend(
    make_fleet: FleetFactory,
) -> None:
    """The decision's telemetry is taken off the request's path, not dropped: it is recorded
    once the request waits for its backend, so ``/metrics`` shows it while the backend still
    holds the answer; the answer then carries the decision header, built in that wait."""
    gate = threading.Event()
    fleet = make_fleet({"a": FakeState(served_model_name="a", gate=gate)})
    a = fleet.backends["a"].state
    name = "llm_router_route_duration_seconds_count"
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.post,
                fleet.url + "/v1/chat/completions",
                json={"model": "auto", "messages": MSG, "max_tokens": 2},
                timeout=30,
            )
            assert wait_until(lambda: len(a.received) == 1, 10)
            assert fleet.metric(name, model_id="a") == 1 and not pending.done()
            gate.set()
            reply = pending.result(timeout=30)
    finally:
        gate.set()
    assert reply.status_code == 200
    assert reply.headers["x-quantroute-decision"].startswith("chosen=a a:")
    assert fleet.metric(name, model_id="a") == 1


def test_health_ready_and_own_metrics(make_fleet: FleetFactory) -> None:
    fleet = make_fleet()
    assert httpx.get(fleet.url + "/health").status_code == 200
    assert httpx.get(fleet.url + "/ready").json()["ready"] is True
    fleet.client().chat.completions.create(model="auto", messages=MSG, max_tokens=1)
    text = httpx.get(fleet.url + "/metrics").text
    for name in (
        "llm_router_route_duration_seconds_bucket",
        "quantroute_requests_total",
        "quantroute_backend_up",
        "quantroute_upstream_ttfb_seconds",
    ):
        assert name in text
    assert "vllm:" not in text


def test_a_whole_answer_reaches_the_client_before_its_request_is_settled(
    make_fleet: FleetFactory,
) -> None:
    """The answer is sent first and the request's accounting runs after it, off the client's
    wait; the backend's in-flight lease is released before the answer is sent. The decision
    log's callback (the last step of the settling) is held on the gateway's loop until the
    client has its answer: were the settling before the send, the answer could not arrive."""
    fleet = make_fleet()
    gateway = fleet.gateway.app.state.live.gateway
    entered, release, left = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, float] = {}
    settled = gateway.router.settled

    def held(ctx: RequestContext) -> None:  # on the gateway's loop
        seen["in_flight"] = gateway.store.inflight.total()
        entered.set()
        release.wait(10.0)
        settled(ctx)
        left.set()

    gateway.router.settled = held
    try:
        reply = fleet.client().chat.completions.create(model="auto", messages=MSG, max_tokens=3)
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        assert entered.wait(10.0), "the request was never settled"
        assert not left.is_set(), "the answer waited for the request to be settled"
        assert seen["in_flight"] == 0, "the lease was still held when the answer went out"
    finally:
        release.set()
    assert left.wait(10.0)
    assert fleet.metric("quantroute_requests_total", status="200") == 1.0
    assert fleet.metric("quantroute_completion_tokens_total") == 3.0


def test_the_last_request_out_builds_the_next_ones_snapshot_a_busy_gateway_does_not(
    make_fleet: FleetFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that was the last one in flight brings the routing snapshot up to date as it
    is settled (after its answer was sent), with every state's prepared scoring terms: the
    snapshot the next request's decision takes then builds no backend's state, and finds their
    terms ready. With another request in flight, the settling builds nothing and that snapshot
    builds what changed, whose terms the decision will work out. Only events rebuild a state
    here: the measurements are folded once (their fold and reuse windows are set aside) and no
    scrape or staleness comes within the test."""
    monkeypatch.setattr(store_module, "MEASURED_FOLD_S", 1e9)
    monkeypatch.setattr(store_module, "MEASURED_REUSE_S", 1e9)
    fleet = make_fleet(policy={"scrape_interval_s": 60.0, "staleness_limit_s": 600.0})
    gateway = fleet.gateway.app.state.live.gateway
    store = gateway.store
    builds = [0]
    build = store._build

    def counting(*args: Any) -> BackendState:
        builds[0] += 1
        state: BackendState = build(*args)
        return state

    monkeypatch.setattr(store, "_build", counting)
    seen: list[tuple[int, int, bool]] = []
    router = gateway.router
    settled = router.settled
    left = threading.Event()

    def held(ctx: RequestContext) -> None:  # on the gateway's loop
        busy = len(seen) == 2  # the third request: another one is in flight as it settles
        other = store.inflight.begin("b", 0) if busy else None
        before = builds[0]
        settled(ctx)
        at_settling = builds[0] - before
        snapshot = store.snapshot()  # what the next request's decision would take now
        kept = router._prepared
        ready = all(b.id in kept and kept[b.id].state is b for b in snapshot.backends)
        seen.append((at_settling, builds[0] - before - at_settling, ready))
        if other is not None:
            other.release()
        left.set()

    gateway.router.settled = held
    client = fleet.client()
    for _ in range(3):
        left.clear()
        client.chat.completions.create(model="auto", messages=MSG, max_tokens=3)
        assert left.wait(10.0), "the request was never settled"
    # the second: its backend's state built as it settled (the other one kept), none after,
    # and both states' terms prepared
    assert seen[1] == (1, 0, True)
    # the third: nothing built or prepared as it settled; the next snapshot builds both states
    assert seen[2] == (0, 2, False)
