"""Every error path answers in OpenAI's error format with the right status; nothing is forwarded."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from quantroute.testing.fake_backend import FakeState

from .conftest import FleetFactory

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"model": "auto"}', "messages"),
        (b'{"model": "auto", "messages": []}', "messages"),
        (b'{"model": "auto", "messages": "hi"}', "messages"),
        (b'{"model": "auto", "messages": [{"content": "hi"}]}', "messages[0]"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}',
            "max_tokens",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "9"}',
            "max_tokens",
        ),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}',
            "stream",
        ),
    ],
)
def test_bad_chat_bodies_get_400(make_fleet: FleetFactory, body: bytes, param: str | None) -> None:
    fleet = make_fleet()
    r = httpx.post(
        fleet.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(r, 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert not any(b.state.received for b in fleet.backends.values())


def test_bad_completion_prompt(make_fleet: FleetFactory) -> None:
    fleet = make_fleet()
    r = httpx.post(fleet.url + "/v1/completions", json={"model": "auto", "prompt": {"a": 1}})
    assert assert_openai_error(r, 400)["param"] == "prompt"


def test_unknown_model_is_404(make_fleet: FleetFactory) -> None:
    fleet = make_fleet()
    with pytest.raises(openai.NotFoundError) as info:
        fleet.client().chat.completions.create(model="gpt-nope", messages=MSG)
    assert info.value.code == "model_not_found"


def test_prompt_too_long_for_every_backend_is_400_and_never_forwarded(
    make_fleet: FleetFactory,
) -> None:
    fleet = make_fleet(
        {
            "a": FakeState(served_model_name="a", max_model_len=1024),
            "b": FakeState(served_model_name="b", max_model_len=2048),
        }
    )
    long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(openai.BadRequestError) as info:
        fleet.client().chat.completions.create(model="auto", messages=long, max_tokens=10)
    assert info.value.code == "context_length_exceeded"
    assert not any(b.state.received for b in fleet.backends.values())
    # A prompt that fits only the longer backend goes there.
    mid: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 1200}]
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="auto", messages=mid, max_tokens=10
    )
    assert raw.headers["x-quantroute-backend"] == "b"


def test_no_backend_is_503_with_reasons_and_retry_after(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {
            "a": FakeState(served_model_name="a", kv_usage=0.99),
            "b": FakeState(served_model_name="b", kv_usage=0.97),
        },
        policy={"flow_control": {"on_saturation": "reject"}},  # no queue: today's 503 at once
    )
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG})
    error = assert_openai_error(r, 503, "no_backend_available")
    assert r.headers["retry-after"] == "1"
    assert set(error["backends"]) == {"a", "b"} and error["backends"]["a"][0].startswith(
        "kv_ceiling"
    )
    assert fleet.metric("quantroute_no_backend_total", group="auto") == 1
    assert httpx.get(fleet.url + "/v1/nothing-here").json()["error"]["code"] == "not_found"


def test_explain_returns_decision_without_forwarding(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {"a": FakeState(served_model_name="a", kv_usage=0.9), "b": FakeState(served_model_name="b")}
    )
    r = httpx.post(
        fleet.url + "/v1/route/explain",
        json={"model": "auto", "messages": MSG, "max_tokens": 5},
        headers={"x-quantroute-task": "coding"},
    )
    body = r.json()
    assert body["chosen"] == "b" and body["features"]["task"] == "coding"
    verdicts = {c["backend"]: c for c in body["candidates"]}
    assert verdicts["a"]["admitted"] is False and verdicts["a"]["reasons"][0].startswith(
        "kv_pressure"
    )
    assert verdicts["b"]["admitted"] is True and 0 <= verdicts["b"]["score"] <= 1
    assert not any(b.state.received for b in fleet.backends.values())


def test_explain_takes_a_completions_body_and_records_nothing(make_fleet: FleetFactory) -> None:
    fleet = make_fleet(
        {"a": FakeState(served_model_name="a", kv_usage=0.9), "b": FakeState(served_model_name="b")}
    )
    before = httpx.get(fleet.url + "/metrics").text
    body = {"model": "auto", "prompt": "def add(a, b):", "max_tokens": 5}
    explained = httpx.post(fleet.url + "/v1/route/explain", json=body).json()
    assert explained["features"]["kind"] == "completion"
    assert explained["features"]["task"] == "coding" and explained["chosen"] == "b"
    chat = {"model": "auto", "messages": MSG}
    assert (
        httpx.post(fleet.url + "/v1/route/explain", json=chat).json()["features"]["kind"] == "chat"
    )
    bad = httpx.post(fleet.url + "/v1/route/explain", json={"model": "auto", "prompt": 7})
    assert_openai_error(bad, 400, "invalid_request")
    # a dry run: no decision metric, rejection, cache-pressure event or admin count moved
    for name in (
        "llm_router_route_duration_seconds_count",
        "quantroute_filter_rejections_total",
        "llm_router_cache_pressure_events_total",
    ):
        assert fleet.metric(name) == 0, name
    assert fleet.admin()["a"]["decisions"]["steered_away"] == {}
    assert not any(b.state.received for b in fleet.backends.values())
    assert before.count("\n") == httpx.get(fleet.url + "/metrics").text.count("\n")
