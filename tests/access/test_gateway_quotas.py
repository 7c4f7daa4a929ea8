"""Quotas and request hygiene through the real gateway: 429s with OpenAI's headers, the token
correction, concurrency, two gateways sharing one real Redis, Redis down, 415/413, caps."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer, wait_until
from quantroute.testing.redis_server import RedisServer

from .fake_stack import MSG, Gate, GateFactory, key_row

KEY = "qr-quota-test-key-0123456789abcdefghij"
ADMIN = "qr-quota-admin-key-0123456789abcdefghij"
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def keys(**limits: int) -> list[dict[str, Any]]:
    return [key_row("team", KEY, limits=limits), key_row("ops", ADMIN, admin=True)]


def test_requests_per_minute_through_the_gateway(make_gate: GateFactory) -> None:
    gate = make_gate({"keys": keys(requests_per_minute=3, tokens_per_minute=100_000)})
    remaining = []
    for _ in range(3):
        r = gate.post(KEY)
        assert r.status_code == 200, r.text
        assert all(h in r.headers for h in RATE_HEADERS)
        remaining.append(r.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as refused:
        gate.client(KEY).chat.completions.create(model="auto", messages=MSG, max_tokens=4)
    response = refused.value.response
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert error["request_id"] == response.headers["x-request-id"]
    assert len(gate.backends["a"].state.received) == 3  # the refused one never reached vLLM
    # another key is not affected
    assert gate.post(ADMIN).status_code == 200


def test_every_response_of_a_limited_key_carries_the_headers(make_gate: GateFactory) -> None:
    gate = make_gate({"keys": keys(requests_per_minute=50, tokens_per_minute=5000)})
    bad = gate.post(KEY, {"model": "auto", "messages": "not a list"})
    assert bad.status_code == 400
    models = gate.get(KEY, "/v1/models")
    for response in (bad, models):
        assert all(h in response.headers for h in RATE_HEADERS), response.headers
        assert response.headers["x-ratelimit-remaining-requests"] == "50"


@pytest.mark.parametrize("reserve", [True, False], ids=["reserve-completion", "prompt-only"])
def test_tokens_are_charged_from_the_real_usage(make_gate: GateFactory, reserve: bool) -> None:
    quotas = {"reserve_completion": reserve}
    gate = make_gate({"keys": keys(tokens_per_minute=1000), "quotas": quotas})
    # the fake backend reports 10 prompt tokens and max_tokens completion tokens
    first = gate.post(KEY, {"model": "auto", "messages": MSG, "max_tokens": 300})
    assert first.status_code == 200
    charged = 1000 - int(first.headers["x-ratelimit-remaining-tokens"])
    prompt = charged - 300 if reserve else charged
    assert 0 < prompt < 20  # a short prompt, estimated at admission (+ max_tokens reserved)

    def remaining() -> int:
        return int(gate.get(KEY, "/v1/models").headers["x-ratelimit-remaining-tokens"])

    assert wait_until(lambda: remaining() == 1000 - 310, 5), remaining()
    gate.post(KEY, {"model": "auto", "messages": MSG, "max_tokens": 650})
    assert wait_until(lambda: remaining() == 690 - 660, 5), remaining()
    long_prompt = [{"role": "user", "content": "x" * 400}]
    refused = gate.post(KEY, {"model": "auto", "messages": long_prompt, "max_tokens": 1})
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"


def test_a_reservation_above_the_limit_is_refused_and_given_back(make_gate: GateFactory) -> None:
    gate = make_gate({"keys": keys(tokens_per_minute=1000)})
    assert gate.post(KEY, {"model": "auto", "messages": MSG, "max_tokens": 999}).status_code == 429
    ok = gate.post(KEY, {"model": "auto", "messages": MSG, "max_tokens": 900})
    assert ok.status_code == 200, ok.text  # the refused reservation was not kept


def test_concurrent_requests_per_key(make_gate: GateFactory) -> None:
    gate = make_gate(
        {"keys": keys(concurrent_requests=1)},
        states={"a": FakeState(served_model_name="model-a", chunk_delay_s=0.02)},
    )
    body = {"model": "auto", "messages": MSG, "max_tokens": 60, "stream": True}
    opened = threading.Event()
    results: list[int] = []

    def long_stream() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream(
            "POST", gate.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as r:
            opened.set()
            r.read()
            results.append(r.status_code)

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert opened.wait(10)
    second = gate.post(KEY)
    assert second.status_code == 429 and "concurrent" in second.json()["error"]["message"]
    worker.join(30)
    assert results == [200]
    assert wait_until(lambda: gate.post(KEY).status_code == 200, 5)


def test_two_gateways_share_the_quota_through_one_redis(
    make_gate: GateFactory, redis_url: str
) -> None:
    backend = FakeBackend(FakeState(served_model_name="model-a"))
    with ThreadedServer(backend.app) as server:
        access = {
            "keys": keys(requests_per_minute=6),
            "quotas": {"redis_url": redis_url, "redis_timeout_s": 2.0},
        }
        one = make_gate(access, backends={"a": backend}, servers={"a": server})
        two = make_gate(access, backends={"a": backend}, servers={"a": server})
        statuses = [g.post(KEY).status_code for _ in range(5) for g in (one, two)]
        assert statuses.count(200) == 6 and statuses.count(429) == 4
        assert one.get(ADMIN, "/admin/access").json()["quota_store"] == "redis"
        assert len(backend.state.received) == 6


def _metric(gate: Gate, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = gate.get(ADMIN, "/metrics").text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def test_redis_down_falls_back_to_local_limits_without_hanging(
    make_gate: GateFactory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    access = {
        "keys": keys(requests_per_minute=4),
        "quotas": {"redis_url": own_redis.url, "redis_timeout_s": 0.3, "redis_retry_s": 60},
    }
    gate = make_gate(access)
    assert gate.post(KEY).status_code == 200
    own_redis.pause()  # a Redis that hangs rather than refuses
    try:
        # each post waits at most the client's 30 s: a hang fails the test, the 0.3 s bound ends
        # the first request's wait
        with caplog.at_level(logging.WARNING, logger="quantroute.access"):
            statuses = [gate.post(KEY).status_code for _ in range(6)]
    finally:
        own_redis.resume()
    assert statuses == [200] * 4 + [429] * 2  # a fresh local window with the same limit
    # one bounded wait, then Redis is skipped (the other five requests did not call it)
    assert _metric(gate, "quantroute_quota_store_errors_total") == 1
    assert _metric(gate, "quantroute_quota_degraded") == 1
    assert "quota store unreachable" in caplog.text
    assert gate.get(ADMIN, "/admin/access").json()["quota_store_degraded"] is True


def test_redis_down_with_refuse_answers_503(make_gate: GateFactory, own_redis: RedisServer) -> None:
    access = {
        "keys": keys(requests_per_minute=4),
        "quotas": {"redis_url": own_redis.url, "on_redis_error": "refuse", "redis_timeout_s": 0.3},
    }
    gate = make_gate(access)
    own_redis.stop()
    r = gate.post(KEY)
    assert r.status_code == 503 and r.json()["error"]["code"] == "quota_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    assert gate.backends["a"].state.received == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        (None, 415),
        ("application/json; charset=utf-8", 200),
        ("application/vnd.api+json", 200),
    ],
)
def test_only_json_bodies(make_gate: GateFactory, content_type: str | None, status: int) -> None:
    gate = make_gate({"keys": keys()})
    headers = {"Authorization": f"Bearer {KEY}"}
    if content_type:
        headers["Content-Type"] = content_type
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    r = httpx.post(gate.url + "/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == status, r.text
    if status == 415:
        assert r.json()["error"]["code"] == "unsupported_media_type"
        assert gate.backends["a"].state.received == []


def test_bodies_over_the_size_limit_get_413(make_gate: GateFactory) -> None:
    gate = make_gate({"keys": keys()}, resilience={"client": {"max_body_bytes": 2000}})
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 3000}]}
    r = gate.post(KEY, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # the access middleware runs first: the refusal carries the request id, header and body
    assert r.headers["x-request-id"] == r.json()["error"]["request_id"]
    # and a caller without a valid key is refused before its body is looked at
    assert gate.post("not-a-key", big).status_code == 401
    assert gate.backends["a"].state.received == []


def test_max_body_bytes_lives_in_resilience_client() -> None:
    from quantroute.config import parse_config
    from quantroute.errors import ConfigError

    with pytest.raises(ConfigError, match=r"resilience\.client\.max_body_bytes"):
        parse_config({"access": {"max_body_bytes": 2000}})


CAPS = [
    {"group": "auto", "max_tokens": 100, "n": 2, "messages": 3},
    {"group": "*", "max_tokens": 1000},
]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "auto", "messages": MSG, "max_tokens": 101}, "max_tokens"),
        ({"model": "auto", "messages": MSG, "max_completion_tokens": 500}, "max_completion_tokens"),
        ({"model": "auto", "messages": MSG, "n": 3}, "n"),
        ({"model": "auto", "messages": MSG, "n": "3"}, "n"),
        ({"model": "auto", "messages": MSG * 4}, "messages"),
        ({"model": "model-a", "messages": MSG, "max_tokens": 101}, "max_tokens"),  # pinned
        ({"model": "free", "messages": MSG, "max_tokens": 1001}, "max_tokens"),
    ],
)
def test_per_group_caps(make_gate: GateFactory, body: dict[str, Any], param: str) -> None:
    gate = make_gate(
        {"keys": keys(), "request_caps": CAPS},
        groups=[{"name": "auto", "variants": ["a"]}, {"name": "free", "variants": ["a"]}],
    )
    r = gate.post(KEY, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert (
        gate.post(KEY, {"model": "free", "messages": MSG * 4, "max_tokens": 500}).status_code == 200
    )


@pytest.mark.parametrize(
    ("mode", "user_sees", "admin_sees"),
    [("all", True, True), ("admin", False, True), ("off", False, False)],
)
def test_decision_header_setting(
    make_gate: GateFactory, mode: str, user_sees: bool, admin_sees: bool
) -> None:
    gate = make_gate({"keys": keys(), "decision_header": mode})
    assert ("x-quantroute-decision" in gate.post(KEY).headers) is user_sees
    assert ("x-quantroute-decision" in gate.post(ADMIN).headers) is admin_sees


def test_a_keys_default_latency_class(make_gate: GateFactory) -> None:
    rows = [key_row("batcher", ADMIN, admin=True, latency_class="batch")]
    gate = make_gate({"keys": rows})
    body = {"model": "auto", "messages": MSG}
    explain = httpx.post(
        gate.url + "/v1/route/explain", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert explain.json()["features"]["latency_class"] == "batch"
    explicit = httpx.post(
        gate.url + "/v1/route/explain",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN}", "x-quantroute-priority": "interactive"},
    )
    assert explicit.json()["features"]["latency_class"] == "interactive"


def test_no_backend_reasons_only_for_those_who_see_decisions(make_gate: GateFactory) -> None:
    gate = make_gate(
        {"keys": keys()},
        states={"a": FakeState(served_model_name="model-a", kv_usage=0.99)},
        groups=[{"name": "auto", "variants": ["a"], "on_saturation": "reject"}],
    )
    user, admin = gate.post(KEY), gate.post(ADMIN)
    assert user.status_code == admin.status_code == 503
    assert "backends" not in user.json()["error"] and "backends" in admin.json()["error"]


def test_a_chunked_body_over_the_limit_gets_413(make_gate: GateFactory) -> None:
    gate = make_gate({"keys": keys()}, resilience={"client": {"max_body_bytes": 2000}})
    filler = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]})

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        data = filler.encode()
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(gate.url + "/v1/chat/completions", content=chunks(), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    small = json.dumps({"model": "auto", "messages": MSG, "max_tokens": 2}).encode()
    ok = httpx.post(gate.url + "/v1/chat/completions", content=iter([small]), headers=headers)
    assert ok.status_code == 200, ok.text


def test_a_key_revoked_in_the_keys_file_is_refused_without_a_restart(tmp_path: Path) -> None:
    from quantroute.config import parse_config
    from quantroute.server.app import create_app
    from quantroute.testing.gateway_thread import GatewayThread

    keys_file = tmp_path / "keys.yaml"
    row = key_row("team", KEY)
    keys_file.write_text(yaml.safe_dump({"keys": [row]}))
    config = parse_config({"access": {"keys_file": str(keys_file)}})
    app = create_app(config, keys_poll_s=0.05)
    with GatewayThread(config, app=app) as gateway:
        headers = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(gateway.url + "/v1/models", headers=headers).status_code == 200
        keys_file.write_text(yaml.safe_dump({"keys": [{**row, "revoked": True}]}))
        stamp = time.time() + 5  # a new mtime whatever the filesystem's resolution
        os.utime(keys_file, (stamp, stamp))

        def refused() -> bool:
            r = httpx.get(gateway.url + "/v1/models", headers=headers)
            return r.status_code == 401 and "revoked" in r.json()["error"]["message"]

        assert wait_until(refused, 5)
