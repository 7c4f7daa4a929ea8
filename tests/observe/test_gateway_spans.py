"""The gateway's spans, read through the SDK's in-memory exporter, for real requests over HTTP."""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from quantroute.testing.fake_backend import FakeState, wait_until

from .conftest import API_KEY, FleetFactory, continuing_fleet

PROMPT = "Write a python function named add_numbers that adds two integers."
MSG: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _server(spans: list[ReadableSpan]) -> ReadableSpan:
    [server] = [s for s in spans if s.kind is SpanKind.SERVER]
    return server


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _upstreams(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    found = [s for s in spans if s.name == "quantroute.upstream"]
    return sorted(found, key=lambda s: int(_attrs(s)["quantroute.attempt"]))


def _done(n_upstream: int = 1) -> Any:
    return lambda spans: (
        any(s.kind is SpanKind.SERVER for s in spans)
        and (len([s for s in spans if s.name == "quantroute.upstream"]) >= n_upstream)
    )


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def test_a_routed_request_is_one_server_span_with_parse_decide_and_upstream_children(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(
        {"a": FakeState(served_model_name="a"), "b": FakeState(served_model_name="b")},
        backend_overrides={"b": {"gpu_cost_per_hour": 50.0}},
        policy={"tie_tolerance": 0.0},
    )
    reply = fleet.client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, max_tokens=5, extra_headers={"x-quantroute-priority": "batch"}
    )
    assert reply.headers["x-quantroute-backend"] == "a"
    usage = reply.parse().usage
    assert usage is not None
    spans = fleet.wait_spans(_done())
    server = _server(spans)
    assert server.name == "POST /v1/chat/completions"
    assert server.parent is None
    attrs = _attrs(server)
    assert attrs["http.response.status_code"] == 200
    assert attrs["quantroute.group"] == "auto"
    assert attrs["quantroute.backend"] == "a" and attrs["quantroute.variant"] == "a-variant"
    assert attrs["quantroute.task_type"] == "coding"
    assert attrs["quantroute.latency_class"] == "batch"
    assert attrs["gen_ai.request.model"] == "auto" and attrs["gen_ai.request.max_tokens"] == 5
    assert attrs["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == usage.completion_tokens == 5
    assert attrs["quantroute.attempts"] == 1
    assert server.status.status_code is StatusCode.UNSET
    children = [
        _one(spans, "quantroute.parse"),
        _one(spans, "quantroute.decide"),
        *_upstreams(spans),
    ]
    for child in children:
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    decide = _one(spans, "quantroute.decide")
    [event] = [e for e in decide.events if e.name == "quantroute.decision"]
    ev: dict[str, Any] = dict(event.attributes or {})
    assert ev["quantroute.chosen"] == "a" and ev["quantroute.candidates"] == 2
    assert list(ev["quantroute.top.backends"]) == ["a", "b"]
    scores = list(ev["quantroute.top.scores"])
    assert scores == sorted(scores, reverse=True) and len(scores) == 2
    [upstream] = _upstreams(spans)
    assert upstream.kind is SpanKind.CLIENT
    assert _attrs(upstream)["http.response.status_code"] == 200
    port = int(fleet.config.backend("a").url.rsplit(":", 1)[1])
    assert (_attrs(upstream)["server.address"], _attrs(upstream)["server.port"]) == (
        "127.0.0.1",
        port,
    )
    assert [e.name for e in upstream.events] == ["first_byte"]
    assert server.end_time is not None and upstream.end_time is not None
    assert server.end_time >= upstream.end_time


def test_the_backend_gets_a_traceparent_naming_the_attempt_span_and_a_caller_trace_continues(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet()
    caller = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
    fleet.client().chat.completions.create(
        model="auto", messages=MSG, max_tokens=2, extra_headers={"traceparent": caller}
    )
    spans = fleet.wait_spans(_done())
    server = _server(spans)
    assert _hex(server.context.trace_id, 32) == TRACE_ID
    assert server.parent is not None and _hex(server.parent.span_id, 16) == CALLER_SPAN
    [upstream] = _upstreams(spans)
    [seen] = fleet.headers_seen["a"]
    expected = f"00-{TRACE_ID}-{_hex(upstream.context.span_id, 16)}-01"
    assert seen["traceparent"] == expected


def test_a_new_trace_is_started_and_propagated_without_an_incoming_one(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet()
    fleet.client().chat.completions.create(model="auto", messages=MSG, max_tokens=2)
    spans = fleet.wait_spans(_done())
    [seen] = fleet.headers_seen["a"]
    version, trace_id, parent, flags = seen["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1 == 1  # sampled (bit 1: random trace id)
    assert trace_id == _hex(_server(spans).context.trace_id, 32)
    assert parent == _hex(_upstreams(spans)[0].context.span_id, 16)


def test_a_retry_is_two_attempt_spans_the_first_failed_with_a_retry_event(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(
        {
            "a": FakeState(served_model_name="a", fail_status=500, fail_times=-1),
            "b": FakeState(served_model_name="b"),
        },
        backend_overrides={"b": {"gpu_cost_per_hour": 50.0}},
        policy={"tie_tolerance": 0.0},
        # After a's 500, passive health would steer the next request away from it for a moment
        # (suspect_s) and eject it after a few: here the subject is the retry, tried twice.
        resilience={"outlier_detection": {"enabled": False}},
    )
    for stream in (False, True):
        fleet.exporter.clear()
        for h in fleet.headers_seen.values():
            h.clear()
        # the first round's request to a counts in a's load until a scrape has seen it (then
        # the cheaper a would not be the first pick): wait for a scrape after it
        assert wait_until(lambda: _unseen(fleet) == 0, 5.0), _unseen(fleet)
        reply = fleet.client().chat.completions.with_raw_response.create(
            model="auto", messages=MSG, max_tokens=2, stream=stream
        )
        assert reply.headers["x-quantroute-backend"] == "b"
        if stream:
            list(reply.parse())
        spans = fleet.wait_spans(_done(2))
        first, second = _upstreams(spans)
        a1, a2 = _attrs(first), _attrs(second)
        assert (a1["quantroute.backend"], a1["http.response.status_code"]) == ("a", 500)
        assert first.status.status_code is StatusCode.ERROR
        assert [e.name for e in first.events] == ["retry"]
        assert (a2["quantroute.backend"], a2["http.response.status_code"]) == ("b", 200)
        assert second.status.status_code is StatusCode.UNSET
        server = _server(spans)
        assert _attrs(server)["quantroute.attempts"] == 2
        assert _attrs(server)["quantroute.backend"] == "b"
        assert server.status.status_code is StatusCode.UNSET
        # each backend saw its own attempt span as the parent, in one trace
        [to_a], [to_b] = fleet.headers_seen["a"], fleet.headers_seen["b"]
        assert to_a["traceparent"].split("-")[2] == _hex(first.context.span_id, 16)
        assert to_b["traceparent"].split("-")[2] == _hex(second.context.span_id, 16)


def test_a_client_that_disconnects_mid_stream_ends_the_span_as_499_error(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet({"a": FakeState(served_model_name="a", chunk_delay_s=0.05)})
    stream = fleet.client().chat.completions.create(
        model="auto", messages=MSG, max_tokens=200, stream=True
    )
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    spans = fleet.wait_spans(_done())
    server = _server(spans)
    assert _attrs(server)["http.response.status_code"] == 499
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "client disconnected"
    [upstream] = _upstreams(spans)
    assert upstream.status.status_code is StatusCode.ERROR
    assert _attrs(upstream)["error.type"] == "client_disconnected"
    assert "first_byte" in [e.name for e in upstream.events]
    assert wait_until(lambda: fleet.backends["a"].state.aborted == 1)


def test_a_client_that_disconnects_before_the_first_byte_ends_the_span_as_499(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet({"a": FakeState(served_model_name="a", header_delay_s=5.0)})
    with httpx.Client(timeout=0.5) as client, contextlib.suppress(httpx.ReadTimeout):
        client.post(fleet.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG})
    spans = fleet.wait_spans(_done())
    server = _server(spans)
    assert _attrs(server)["http.response.status_code"] == 499
    assert server.status.status_code is StatusCode.ERROR
    [upstream] = _upstreams(spans)
    assert upstream.status.status_code is StatusCode.ERROR
    assert "first_byte" not in [e.name for e in upstream.events]


def test_client_errors_leave_the_status_unset_and_server_errors_set_it(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(
        {"a": FakeState(served_model_name="a", kv_usage=0.99)},
        policy={"flow_control": {"on_saturation": "reject"}},  # the 503 at once, not a wait
    )
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "nope", "messages": MSG})
    assert r.status_code == 404
    spans = fleet.wait_spans(_done(0))
    server = _server(spans)
    assert _attrs(server)["http.response.status_code"] == 404
    assert _attrs(server)["error.type"] == "model_not_found"
    assert server.status.status_code is StatusCode.UNSET
    assert _upstreams(spans) == []
    fleet.exporter.clear()
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG})
    assert r.status_code == 503
    spans = fleet.wait_spans(_done(0))
    server = _server(spans)
    assert _attrs(server)["error.type"] == "no_backend_available"
    assert server.status.status_code is StatusCode.ERROR
    [event] = _one(spans, "quantroute.decide").events
    rejected: Any = dict(event.attributes or {})["quantroute.rejected.backends"]
    assert list(rejected) == ["a"]
    fleet.exporter.clear()
    json_type = {"content-type": "application/json"}  # else the access edge answers 415
    r = httpx.post(fleet.url + "/v1/chat/completions", content=b"{not json", headers=json_type)
    assert r.status_code == 400
    spans = fleet.wait_spans(_done(0))
    assert _attrs(_server(spans))["error.type"] == "invalid_request"
    assert _attrs(_one(spans, "quantroute.parse"))["error.type"] == "invalid_request"


def test_unsampled_requests_record_nothing_but_still_propagate_the_decision(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(sampler=ParentBased(ALWAYS_OFF))
    fleet.client().chat.completions.create(model="auto", messages=MSG, max_tokens=2)
    assert wait_until(lambda: len(fleet.headers_seen["a"]) == 1)
    assert fleet.spans() == []
    flags = fleet.headers_seen["a"][0]["traceparent"].split("-")[3]
    assert int(flags, 16) & 1 == 0  # not sampled: vLLM's parent-based sampler follows
    sampled_caller = f"00-{TRACE_ID}-{CALLER_SPAN}-01"  # parent-based: the caller decides
    fleet.client().chat.completions.create(
        model="auto", messages=MSG, max_tokens=2, extra_headers={"traceparent": sampled_caller}
    )
    spans = fleet.wait_spans(_done())
    assert {_hex(s.context.trace_id, 32) for s in spans} == {TRACE_ID}


def test_no_prompt_text_or_key_in_any_span_or_access_log_line(traced_fleet: FleetFactory) -> None:
    fleet = traced_fleet(access_log=True)
    for stream in (False, True):
        reply = fleet.client().chat.completions.create(
            model="auto", messages=MSG, max_tokens=3, stream=stream
        )
        if stream:
            list(reply)
    spans = fleet.wait_spans(lambda s: len([x for x in s if x.kind is SpanKind.SERVER]) == 2)
    dumped = "\n".join(s.to_json() for s in spans)
    fleet.gateway.stop()  # drains the access log
    assert fleet.access_log_path is not None
    dumped += fleet.access_log_path.read_text()
    for secret in (API_KEY, "add_numbers", "python function", " tok"):
        assert secret not in dumped
    assert "quantroute.task_type" in dumped  # the dump is the real thing


def test_the_access_log_line_carries_the_trace_and_the_decision(traced_fleet: FleetFactory) -> None:
    fleet = traced_fleet(
        {
            "a": FakeState(served_model_name="a", fail_status=503, fail_times=1),
            "b": FakeState(served_model_name="b"),
        },
        backend_overrides={"b": {"gpu_cost_per_hour": 50.0}},
        policy={"tie_tolerance": 0.0},
        access_log=True,
    )
    stream = fleet.client().chat.completions.create(
        model="auto", messages=MSG, max_tokens=4, stream=True
    )
    list(stream)
    httpx.post(fleet.url + "/v1/chat/completions", json={"model": "nope", "messages": MSG})
    spans = fleet.wait_spans(lambda s: len([x for x in s if x.kind is SpanKind.SERVER]) == 2)
    fleet.gateway.stop()
    assert fleet.access_log_path is not None
    routed, missing = (json.loads(x) for x in fleet.access_log_path.read_text().splitlines())
    traced = {_hex(s.context.trace_id, 32) for s in spans if s.kind is SpanKind.SERVER}
    assert {routed["trace_id"], missing["trace_id"]} == traced
    assert (routed["status"], routed["backend"], routed["variant"]) == (200, "b", "b-variant")
    assert [(a["backend"], a["status"]) for a in routed["attempts"]] == [("a", 503), ("b", 200)]
    assert routed["retries"] == 1 and routed["stream"] is True and routed["task"] == "coding"
    assert (routed["prompt_tokens"], routed["completion_tokens"]) == (10, 4)
    t = routed["timings_ms"]
    assert 0 <= t["parse"] <= t["first_byte"] <= t["total"]
    assert t["upstream_ttfb"] <= t["first_byte"]
    assert set(routed["decision"]["scores"]) == {"a", "b"}
    assert routed["decision"]["ranked"] == ["a", "b"]
    assert (missing["status"], missing["error"], missing["outcome"]) == (
        404,
        "model_not_found",
        "unknown_model",
    )
    assert missing["attempts"] == [] and missing["backend"] is None


def test_a_client_that_disconnects_while_sending_the_body_ends_the_span_as_499(
    traced_fleet: FleetFactory,
) -> None:
    import socket

    fleet = traced_fleet()
    host, port = fleet.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": "auto", "messa'
        )
    spans = fleet.wait_spans(_done(0))
    server = _server(spans)
    assert _attrs(server)["http.response.status_code"] == 499
    assert _attrs(server)["error.type"] == "client_disconnected"
    assert server.status.status_code is StatusCode.ERROR
    assert _upstreams(spans) == [] and fleet.headers_seen["a"] == []


def test_a_stream_continued_on_another_replica_is_a_second_attempt_in_the_same_trace(
    traced_fleet: FleetFactory,
) -> None:
    fleet = continuing_fleet(traced_fleet)
    stream = fleet.client().chat.completions.create(
        model="auto", messages=MSG, max_tokens=8, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == " tok" * 8  # three from a, the rest from b
    spans = fleet.wait_spans(_done(2))
    first, second = _upstreams(spans)
    assert (_attrs(first)["quantroute.backend"], _attrs(first)["error.type"]) == (
        "a",
        "upstream_stream_error",
    )
    assert [e.name for e in first.events] == ["first_byte", "continuation"]
    assert _attrs(second)["quantroute.backend"] == "b"
    assert _attrs(second)["quantroute.continuation"] is True
    assert second.status.status_code is StatusCode.UNSET
    server = _server(spans)
    assert _attrs(server)["http.response.status_code"] == 200
    assert (_attrs(server)["quantroute.attempts"], _attrs(server)["quantroute.backend"]) == (2, "b")
    assert _attrs(server)["gen_ai.usage.output_tokens"] == 8  # 3 relayed from a + 5 from b
    [to_b] = fleet.headers_seen["b"]
    assert to_b["traceparent"].split("-")[1:3] == [
        _hex(server.context.trace_id, 32),
        _hex(second.context.span_id, 16),
    ]
    fleet.gateway.stop()
    assert fleet.access_log_path is not None
    [line] = [json.loads(x) for x in fleet.access_log_path.read_text().splitlines()]
    assert (line["status"], line["backend"], line["completion_tokens"]) == (200, "b", 8)
    assert [(a["backend"], a["status"], a["continuation"]) for a in line["attempts"]] == [
        ("a", 502, False),
        ("b", 200, True),
    ]


def test_a_request_held_by_flow_control_has_a_queue_span_and_its_wait_in_the_log(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(
        {"a": FakeState(served_model_name="a", kv_usage=0.99)},  # over the ceiling: saturated
        access_log=True,
    )
    assert fleet.access_log_path is not None
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            http.post,
            fleet.url + "/v1/chat/completions",
            json={"model": "auto", "messages": MSG, "max_tokens": 2},
        )
        assert wait_until(lambda: http.get(fleet.url + "/admin/flow").json()["groups"], 10)
        assert not waiting.done()
        fleet.backends["a"].state.kv_usage = 0.1  # room: dispatched at the next scrape
        assert waiting.result(timeout=30).status_code == 200
    spans = fleet.wait_spans(_done(1))
    queue = _one(spans, "quantroute.queue")
    assert queue.parent is not None and queue.parent.span_id == _server(spans).context.span_id
    assert queue.end_time is not None and queue.start_time is not None
    decide, upstream = _one(spans, "quantroute.decide"), _upstreams(spans)[0]
    assert decide.end_time is not None and upstream.start_time is not None
    assert decide.end_time <= queue.start_time and queue.end_time <= upstream.start_time
    assert wait_until(lambda: fleet.access_log_path is not None and fleet.access_log_path.exists())
    [line] = _log_lines(fleet)
    assert line["status"] == 200 and line["timings_ms"]["queue"] > 0


def test_a_request_the_queue_gives_up_on_is_logged_with_its_wait_and_refusal(
    traced_fleet: FleetFactory,
) -> None:
    fleet = traced_fleet(
        {"a": FakeState(served_model_name="a", kv_usage=0.99)},
        policy={"flow_control": {"max_wait_s": 0.2}},
        access_log=True,
    )
    r = httpx.post(fleet.url + "/v1/chat/completions", json={"model": "auto", "messages": MSG})
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout"
    spans = fleet.wait_spans(_done(0))
    assert _attrs(_one(spans, "quantroute.queue"))["error.type"] == "queue_timeout"
    assert _attrs(_server(spans))["error.type"] == "queue_timeout"
    assert _upstreams(spans) == []
    [line] = _log_lines(fleet)
    assert (line["status"], line["error"], line["outcome"]) == (503, "queue_timeout", "no_backend")
    assert line["decision"]["saturated"] is True  # full, not unable: so it waited
    assert line["timings_ms"]["queue"] >= 200.0 and line["attempts"] == []


def test_a_request_routed_at_once_has_no_queue_span_or_wait(traced_fleet: FleetFactory) -> None:
    fleet = traced_fleet(access_log=True)
    fleet.client().chat.completions.create(model="auto", messages=MSG, max_tokens=2)
    spans = fleet.wait_spans(_done(1))
    assert [s for s in spans if s.name == "quantroute.queue"] == []
    [line] = _log_lines(fleet)
    assert line["timings_ms"]["queue"] is None


def _log_lines(fleet: Any) -> list[dict[str, Any]]:
    """The access log's lines, once the writer thread has written one per finished request."""
    path = fleet.access_log_path
    assert path is not None
    assert wait_until(lambda: path.exists() and path.read_text().strip() != "", 5.0)
    return [json.loads(x) for x in path.read_text().splitlines()]


def _unseen(fleet: Any) -> int:
    """Requests the gateway sent since each backend's last scrape (its own load account)."""
    rows = httpx.get(fleet.url + "/admin/backends").json()["backends"]
    return sum(int(r["in_flight"]["since_last_scrape"]) for r in rows)
