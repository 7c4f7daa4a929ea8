"""The provider quantroute builds exports over OTLP/HTTP; the test receiver decodes it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quantroute.observe.otel import OtelTracing
from quantroute.observe.settings import TracingSettings
from quantroute.testing.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def _emit(tracing: OtelTracing, n: int) -> None:
    for i in range(n):
        span = tracing.server_span("POST /v1/chat/completions", {}, {"i": i})
        tracing.child(span, "quantroute.parse").end()
        span.end()


def test_spans_reach_the_receiver_with_service_name_and_parentage(receiver: OtlpReceiver) -> None:
    tracing = OtelTracing.from_settings(TracingSettings(receiver.url, "qr-test", 1.0))
    _emit(tracing, 1)
    tracing.shutdown()  # flushes the batch processor
    spans = receiver.spans()
    assert {s.name for s in spans} == {"POST /v1/chat/completions", "quantroute.parse"}
    assert {s.service for s in spans} == {"qr-test"}
    server = next(s for s in spans if s.kind == "server")
    child = next(s for s in spans if s.name == "quantroute.parse")
    assert child.trace_id == server.trace_id and child.parent_span_id == server.span_id
    assert server.attributes == {"i": 0}


def test_ratio_zero_exports_nothing_and_ratio_one_everything(receiver: OtlpReceiver) -> None:
    off = OtelTracing.from_settings(TracingSettings(receiver.url, "off", 0.0))
    _emit(off, 20)
    off.shutdown()
    on = OtelTracing.from_settings(TracingSettings(receiver.url, "on", 1.0))
    _emit(on, 20)
    on.shutdown()
    services = [s.service for s in receiver.spans()]
    assert services.count("off") == 0 and services.count("on") == 40


def test_env_endpoint_and_sampler_are_honoured(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    off = OtelTracing.from_settings(TracingSettings(None, "env-off", None))
    _emit(off, 5)
    off.shutdown()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.0")
    on = OtelTracing.from_settings(TracingSettings(None, "env-on", None))
    _emit(on, 5)
    on.shutdown()
    services = [s.service for s in receiver.spans()]
    assert services.count("env-off") == 0 and services.count("env-on") == 10


def test_an_incoming_traceparent_is_continued(receiver: OtlpReceiver) -> None:
    tracing = OtelTracing.from_settings(TracingSettings(receiver.url, "qr", None))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    span = tracing.server_span("POST /x", {"traceparent": f"00-{trace_id}-{parent}-01"}, {})
    carrier: dict[str, str] = {}
    tracing.inject(span, carrier)
    span.end()
    tracing.shutdown()
    [got] = receiver.spans()
    assert (got.trace_id, got.parent_span_id) == (trace_id, parent)
    assert carrier["traceparent"] == f"00-{trace_id}-{got.span_id}-01"


def test_receiver_refuses_other_content_types(receiver: OtlpReceiver) -> None:
    import httpx

    r = httpx.post(receiver.url, content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415


def test_count_only_receiver_counts_spans_per_service() -> None:
    import httpx

    with OtlpReceiver(count_only=True) as sink:
        for name, n in (("one", 2), ("two", 3)):
            tracing = OtelTracing.from_settings(TracingSettings(sink.url, name, 1.0))
            _emit(tracing, n)
            tracing.shutdown()
        stats = httpx.get(sink.url.removesuffix("/v1/traces") + "/stats").json()
        assert sink.spans() == []
    assert stats["spans"] == {"one": 4, "two": 6} and stats["requests"] == 2
