"""Flow control through the real gateway on loopback, the official OpenAI client as the caller.

The fake backends report a KV cache over the hard ceiling (saturated); a test frees room by
changing what they report, and the gateway notices at its next scrape (every 0.1 s). Every wait
is on a condition (queue depth, what a backend received) with a bounded timeout.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from quantroute.testing.fake_backend import FakeState, wait_until

from .conftest import Fleet, FleetFactory

FULL = 0.99
ROOM = 0.1


def ask(client: openai.OpenAI, text: str, *, batch: bool = False) -> tuple[str, dict[str, str]]:
    """One streamed chat request: its text and the response headers."""
    headers = {"x-quantroute-priority": "batch"} if batch else {}
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": text}],
        max_tokens=4,
        stream=True,
        extra_headers=headers,
    )
    answer = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return answer, dict(raw.headers)


def depth(fleet: Fleet, latency_class: str | None = None) -> float:
    labels = {"group": "auto"} | ({"latency_class": latency_class} if latency_class else {})
    return fleet.metric("quantroute_flow_queue_depth", **labels)


def saturated(**overrides: Any) -> dict[str, FakeState]:
    return {
        "a": FakeState(served_model_name="a", kv_usage=FULL, **overrides),
        "b": FakeState(served_model_name="b", kv_usage=FULL, **overrides),
    }


def free(fleet: Fleet, usage: float = ROOM) -> None:
    for backend in fleet.backends.values():
        backend.state.kv_usage = usage


def tasks(fleet: Fleet) -> int:
    """Tasks alive in the gateway's loop, but a scrape round's (they come and go)."""
    periodic = ("quantroute-scrape-", "anyio.")
    return sum(1 for name in fleet.gateway.task_names() if not name.startswith(periodic))


def queued(fleet: Fleet, n: int, latency_class: str | None = None) -> Callable[[], bool]:
    return lambda: depth(fleet, latency_class) == n


def test_a_burst_beyond_the_fleets_room_waits_and_is_served_when_room_frees(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet(saturated())
    client = fleet.client(timeout=30)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask, client, f"burst {i}") for i in range(8)]
        assert wait_until(queued(fleet, 8), 10), depth(fleet)
        view = httpx.get(fleet.url + "/admin/flow").json()
        assert view["groups"]["auto"]["depth"] == 8 and view["on_saturation"] == {"auto": "queue"}
        assert not any(f.done() for f in futures)
        assert sum(len(b.state.received) for b in fleet.backends.values()) == 0
        free(fleet)
        answers = [f.result(timeout=30) for f in futures]
    assert all(text for text, _ in answers)
    assert {h["x-quantroute-backend"] for _, h in answers} <= {"a", "b"}
    assert depth(fleet) == 0
    assert fleet.metric("quantroute_flow_queue_wait_seconds_count", outcome="dispatched") == 8
    assert fleet.metric("quantroute_requests_total", backend="none", status="503") == 0
    assert httpx.get(fleet.url + "/admin/flow").json()["groups"] == {}


def test_interactive_is_dispatched_before_batch_when_both_wait(make_fleet: FleetFactory) -> None:
    # Room for exactly one request: 10 blocks x 16 tokens = 160 tokens; at 50% usage one request
    # of ~110 tokens fits under the 95% ceiling and the next would not (the gateway's account).
    gate = threading.Event()
    fleet = make_fleet(
        {"a": FakeState(served_model_name="a", kv_usage=FULL, num_gpu_blocks=10, gate=gate)}
    )
    client = fleet.client(timeout=30)
    a = fleet.backends["a"].state

    def one(text: str, batch: bool) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": text}],
            max_tokens=100,
            extra_headers={"x-quantroute-priority": "batch"} if batch else {},
        )
        return raw.headers["x-quantroute-backend"]

    try:
        with ThreadPoolExecutor(2) as pool:
            batch = pool.submit(one, "the batch job", True)
            assert wait_until(queued(fleet, 1, "batch"), 10)
            interactive = pool.submit(one, "the interactive one", False)
            assert wait_until(queued(fleet, 1, "interactive"), 10)
            a.kv_usage = 0.5
            assert wait_until(lambda: len(a.received) >= 1, 10)
            assert a.received[0]["messages"][0]["content"] == "the interactive one"
            gate.set()
            assert interactive.result(timeout=30) == batch.result(timeout=30) == "a"
    finally:
        gate.set()
    assert [r["messages"][0]["content"] for r in a.received] == [
        "the interactive one",
        "the batch job",
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, openai.InternalServerError), (429, openai.RateLimitError)],
)
def test_the_wait_bound_answers_in_openai_format_with_retry_after(
    make_fleet: FleetFactory, status: int, error: type[openai.APIStatusError]
) -> None:
    fleet = make_fleet(
        saturated(),
        policy={"flow_control": {"max_wait_s": 0.3, "reject_status": status, "retry_after_s": 2}},
    )
    with pytest.raises(error) as caught:
        ask(fleet.client(), "too late")
    response = caught.value.response
    assert response.status_code == status and response.headers["retry-after"] == "2"
    body = response.json()["error"]
    assert body["code"] == "queue_timeout" and set(body) >= {"message", "type", "param", "code"}
    assert depth(fleet) == 0
    assert fleet.metric("quantroute_flow_rejected_total", reason="queue_timeout") == 1
    assert fleet.metric("quantroute_flow_queue_wait_seconds_count", outcome="timeout") == 1
    assert fleet.metric("quantroute_requests_total", backend="none", status=str(status)) == 1


def test_the_length_bound_refuses_at_once_and_a_higher_rank_evicts_the_lowest(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet(saturated(), policy={"flow_control": {"max_queue_length": 1}})
    client = fleet.client(timeout=30)
    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(ask, client, "batch", batch=True)
        assert wait_until(queued(fleet, 1, "batch"), 10)
        with pytest.raises(openai.InternalServerError) as refused:
            ask(client, "another batch", batch=True)  # same rank, queue full: refused at once
        assert refused.value.response.json()["error"]["code"] == "queue_full"
        assert refused.value.response.headers["retry-after"] == "1"
        assert not batch.done() and depth(fleet) == 1
        interactive = pool.submit(ask, client, "interactive")
        with pytest.raises(openai.InternalServerError) as evicted:
            batch.result(timeout=10)  # the interactive request took its place
        assert evicted.value.response.json()["error"]["code"] == "queue_full"
        assert wait_until(queued(fleet, 1, "interactive"), 10)
        free(fleet)
        assert interactive.result(timeout=30)[0]
    assert fleet.metric("quantroute_flow_rejected_total", reason="queue_full") == 2
    assert fleet.metric("quantroute_flow_queue_wait_seconds_count", outcome="evicted") == 1


def test_a_client_that_leaves_while_queued_leaves_the_queue(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(saturated())
    tasks_before = tasks(fleet)
    leaving = fleet.client(timeout=httpx.Timeout(30, read=0.5))
    with pytest.raises(openai.APITimeoutError):
        ask(leaving, "I will not wait")
    assert wait_until(queued(fleet, 0), 10)
    assert wait_until(
        lambda: fleet.metric("quantroute_requests_total", backend="none", status="499") == 1, 10
    )
    assert fleet.metric("quantroute_flow_queue_wait_seconds_count", outcome="disconnected") == 1
    assert fleet.metric("quantroute_in_flight_requests") == 0
    assert wait_until(lambda: tasks(fleet) == tasks_before, 5), fleet.gateway.task_names()
    assert sum(len(b.state.received) for b in fleet.backends.values()) == 0
    free(fleet)  # room now: nothing is dispatched for the departed client
    assert fleet.client().chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert sum(len(b.state.received) for b in fleet.backends.values()) == 1


def write_matrix(path: Path) -> str:
    def tasks(quality: float) -> dict[str, Any]:
        return {t: {"quality": quality} for t in ("coding", "reasoning", "extraction", "chat")}

    matrix = {
        "schema_version": 1,
        "generated_at": "2026-11-25T00:00:00Z",
        "variants": {"big": {"tasks": tasks(0.9)}, "small": {"tasks": tasks(0.5)}},
    }
    path.write_text(json.dumps(matrix))
    return str(path)


def test_downgrade_sends_interactive_below_the_floor_and_marks_it(
    make_fleet: FleetFactory, tmp_path: Path
) -> None:
    fleet = make_fleet(
        {
            "big": FakeState(served_model_name="big", kv_usage=FULL),
            "small": FakeState(served_model_name="small", kv_usage=ROOM),
        },
        groups=[
            {
                "name": "auto",
                "variants": ["big", "small"],
                "quality_floor": 0.7,
                "on_saturation": "downgrade",
            }
        ],
        matrix_path=write_matrix(tmp_path / "m.json"),
    )
    client = fleet.client(timeout=30)
    _, headers = ask(client, "hello")
    assert headers["x-quantroute-backend"] == "small"
    assert headers["x-quantroute-downgraded"] == "true"
    assert fleet.metric("quantroute_flow_downgraded_total", group="auto", backend="small") == 1
    with ThreadPoolExecutor(1) as pool:  # batch is never downgraded: it waits for the floor
        batch: Future[tuple[str, dict[str, str]]] = pool.submit(ask, client, "job", batch=True)
        assert wait_until(queued(fleet, 1, "batch"), 10)
        fleet.backends["big"].state.kv_usage = ROOM
        _, batch_headers = batch.result(timeout=30)
    assert batch_headers["x-quantroute-backend"] == "big"
    assert "x-quantroute-downgraded" not in batch_headers
    _, normal = ask(client, "hello again")  # room above the floor: no downgrade
    assert normal["x-quantroute-backend"] == "big" and "x-quantroute-downgraded" not in normal


def test_reject_keeps_the_immediate_503(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        saturated(),
        groups=[{"name": "auto", "variants": ["a", "b"], "on_saturation": "reject"}],
    )
    with pytest.raises(openai.InternalServerError) as caught:
        ask(fleet.client(), "now or never")
    assert caught.value.response.json()["error"]["code"] == "no_backend_available"
    assert caught.value.response.headers["retry-after"] == "1"
    assert fleet.metric("quantroute_flow_queue_wait_seconds_count") == 0
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    explained = httpx.post(fleet.url + "/v1/route/explain", json=body).json()
    assert explained["outcome"] == "no_backend" and explained["saturated"] is True


def test_what_waiting_cannot_clear_is_answered_at_once(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(saturated())
    client = fleet.client()
    with pytest.raises(openai.BadRequestError) as too_long:  # no backend will ever fit it
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "x" * 40_000}], max_tokens=10
        )
    assert too_long.value.response.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert fleet.metric("quantroute_flow_queue_wait_seconds_count") == 0


def test_a_queued_request_whose_backends_go_down_is_answered_without_waiting_out_its_bound(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet(
        saturated(),
        policy={"metrics_outage": "fail_closed", "down_after_failures": 2},
    )
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ask, fleet.client(timeout=30), "still there?")
        assert wait_until(queued(fleet, 1), 10)
        for backend in fleet.backends.values():
            backend.state.metrics_status = 500  # their metrics fail: down, no room to wait for
        with pytest.raises(openai.InternalServerError) as caught:
            waiting.result(timeout=20)  # well before max_wait_s (30 s)
    assert caught.value.response.json()["error"]["code"] == "no_backend_available"
    assert fleet.metric("quantroute_flow_queue_wait_seconds_count", outcome="refused") == 1
    assert depth(fleet) == 0
