"""The trail under access control: spans and access-log lines carry the access middleware's
request id and the key's name (never the key), refusals on the request path are recorded, and a
continued stream is settled once, the trail and the key's quota from the same place."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from quantroute.testing.fake_backend import FakeState, wait_until

from .conftest import API_KEY, FleetFactory, TracedFleet, continuing_fleet

MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
TIGHT_KEY = "sk-tight-key-one-request-per-minute"


def _key(name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), **extra}


ACCESS = {
    "keys": [
        _key("team-a", API_KEY, models=["*"], admin=True, limits={"tokens_per_minute": 100_000}),
        _key("tight", TIGHT_KEY, models=["*"], limits={"requests_per_minute": 1}),
    ]
}


def _servers(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    found = [s for s in spans if s.kind is SpanKind.SERVER]
    return [dict(s.attributes or {}) for s in sorted(found, key=lambda s: s.start_time or 0)]


def _lines(fleet: TracedFleet) -> list[dict[str, Any]]:
    fleet.gateway.stop()  # drains the access log
    assert fleet.access_log_path is not None
    return [json.loads(x) for x in fleet.access_log_path.read_text().splitlines()]


def _key_tokens(fleet: TracedFleet, key: str) -> float:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    text = httpx.get(fleet.url + "/metrics", headers=auth).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "quantroute_key_tokens_total" and s.labels.get("key") == key
    )


def test_a_request_is_recorded_under_the_clients_request_id_and_the_keys_name_never_the_key(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(access_log=True, access=ACCESS)
    chosen = fleet.client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=3, extra_headers={"x-request-id": "req-caller-7"}
    )
    assert chosen.headers["x-request-id"] == "req-caller-7"
    stream = fleet.client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=3, stream=True
    )
    given = stream.headers["x-request-id"]  # none was sent: the middleware made one
    assert given.startswith("req_")
    list(stream.parse())
    spans = fleet.wait_spans(lambda s: len(_servers(s)) == 2)
    assert [(a["quantroute.request_id"], a["quantroute.key"]) for a in _servers(spans)] == [
        ("req-caller-7", "team-a"),
        (given, "team-a"),
    ]
    dumped = "\n".join(s.to_json() for s in spans)
    lines = _lines(fleet)
    assert [(x["request_id"], x["key"], x["status"]) for x in lines] == [
        ("req-caller-7", "team-a", 200),
        (given, "team-a", 200),
    ]
    dumped += fleet.access_log_path.read_text() if fleet.access_log_path else ""
    assert API_KEY not in dumped and hashlib.sha256(API_KEY.encode()).hexdigest() not in dumped


def test_a_quota_refusal_is_recorded_with_the_request_id_of_its_error_body(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(access_log=True, access=ACCESS)
    with openai.OpenAI(base_url=fleet.url + "/v1", api_key=TIGHT_KEY, max_retries=0) as client:
        client.chat.completions.create(model="auto", messages=MSG, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="auto", messages=MSG, max_tokens=2)
    body: Any = refused.value.body
    rid = body["request_id"]
    spans = fleet.wait_spans(lambda s: len(_servers(s)) == 2)
    server = _servers(spans)[1]
    assert (server["quantroute.request_id"], server["quantroute.key"]) == (rid, "tight")
    assert (server["http.response.status_code"], server["error.type"]) == (
        429,
        "rate_limit_exceeded",
    )
    assert [s.name for s in spans].count("quantroute.upstream") == 1  # the refused one: none
    ok, limited = _lines(fleet)
    assert (ok["status"], ok["key"]) == (200, "tight")
    assert (limited["request_id"], limited["status"], limited["error"], limited["attempts"]) == (
        rid,
        429,
        "rate_limit_exceeded",
        [],
    )


def test_a_continued_stream_settles_the_trail_and_the_quota_once_for_every_attempt(
    traced_fleet: FleetFactory,
) -> None:
    fleet = continuing_fleet(traced_fleet, access=ACCESS)
    before = _key_tokens(fleet, "team-a")
    stream = fleet.client().chat.completions.create(
        model="auto", messages=MSG, max_tokens=8, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == " tok" * 8  # three from a, the rest from b
    spans = fleet.wait_spans(lambda s: len(_servers(s)) == 1)
    [server] = _servers(spans)
    assert (server["quantroute.attempts"], server["gen_ai.usage.output_tokens"]) == (2, 8)
    used = server["gen_ai.usage.input_tokens"] + server["gen_ai.usage.output_tokens"]
    # the key is charged what the trail recorded, both backends' tokens, once
    assert wait_until(lambda: _key_tokens(fleet, "team-a") - before == used, 5.0)
    [line] = _lines(fleet)
    assert (line["status"], line["backend"], line["key"]) == (200, "b", "team-a")
    assert line["prompt_tokens"] + line["completion_tokens"] == used
    assert [(a["backend"], a["status"], a["continuation"]) for a in line["attempts"]] == [
        ("a", 502, False),
        ("b", 200, True),
    ]


def test_a_client_gone_during_the_continuation_settles_the_request_once_as_499(
    traced_fleet: FleetFactory,
) -> None:
    fleet = continuing_fleet(
        traced_fleet, FakeState(served_model_name="m", chunk_delay_s=0.2), access=ACCESS
    )
    before = _key_tokens(fleet, "team-a")
    body = {"model": "auto", "messages": MSG, "max_tokens": 40, "stream": True}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", fleet.url + "/v1/chat/completions", json=body, headers=auth) as r:
        seen = b""
        for chunk in r.iter_raw():
            seen += chunk
            if seen.count(b" tok") >= 5:  # three from a, two from b: b is mid-answer
                break
    assert b": quantroute continued on b" in seen
    spans = fleet.wait_spans(lambda s: len(_servers(s)) == 1)
    [server] = _servers(spans)
    assert (server["http.response.status_code"], server["error.type"]) == (
        499,
        "client_disconnected",
    )
    assert wait_until(lambda: fleet.backends["b"].state.aborted == 1, 5.0)  # b stopped too
    # the key is charged once, with what a generated (b reported no usage: it was cut off)
    assert wait_until(lambda: _key_tokens(fleet, "team-a") - before == 3, 5.0)
    [line] = _lines(fleet)
    assert (line["status"], line["error"], line["backend"]) == (499, "client_disconnected", "b")
    assert [(a["backend"], a["status"], a["error"]) for a in line["attempts"]] == [
        ("a", 502, "upstream_stream_error"),
        ("b", None, "client_disconnected"),
    ]
