"""One request, one trace: the gateway's spans and real vLLM's own span under one trace id.

vLLM 0.32's CPU build ships the OpenTelemetry SDK and both OTLP exporters; with
``--otlp-traces-endpoint`` (and OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf) it exports an
``llm_request`` span per request that continues the ``traceparent`` it received. Both the gateway
and the two vLLM servers export to the same OTLP/HTTP receiver, started by the tier.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from quantroute.testing.otlp_receiver import ReceivedSpan

from .conftest import GROUP, VllmTier
from .procs import ManagedProcess
from .stack import gateway_config, start_gateway

pytestmark = pytest.mark.vllm

SERVICE = "quantroute-tier"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@pytest.fixture
def traced_gateway(
    vllm_tier: VllmTier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    config = gateway_config(list(vllm_tier.servers.values()), GROUP)
    config["tracing"] = {
        "endpoint": vllm_tier.traces.url,
        "service_name": SERVICE,
        "sample_ratio": 1.0,
    }
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # the gateway's batch: 200 ms
    process: ManagedProcess
    process, url = start_gateway(config, tmp_path)
    try:
        yield url
    finally:
        process.stop(grace_s=15.0)


def _in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def test_one_request_gives_gateway_and_vllm_spans_under_one_trace_id(
    vllm_tier: VllmTier, traced_gateway: str
) -> None:
    with openai.OpenAI(
        base_url=f"{traced_gateway}/v1", api_key="unused", max_retries=0, timeout=120.0
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=GROUP,
            messages=[{"role": "user", "content": "hello the kalo mira"}],
            max_tokens=6,
            extra_headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
    backend = raw.headers["x-quantroute-backend"]
    usage = raw.parse().usage
    assert usage is not None

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = _in_trace(spans, CALLER_TRACE)
        return any(s.name == "llm_request" for s in mine) and any(
            s.kind == "server" and s.service == SERVICE for s in mine
        )

    spans = _in_trace(vllm_tier.traces.wait_for(complete, timeout_s=30.0), CALLER_TRACE)
    by_name = {s.name: s for s in spans}
    assert {"POST /v1/chat/completions", "quantroute.parse", "quantroute.decide",
            "quantroute.upstream", "llm_request"} <= set(by_name)  # fmt: skip
    server = by_name["POST /v1/chat/completions"]
    upstream = by_name["quantroute.upstream"]
    vllm = by_name["llm_request"]
    assert server.parent_span_id == CALLER_SPAN
    assert upstream.parent_span_id == server.span_id
    # vLLM's span is a child of the gateway's attempt: the traceparent reached vLLM's engine
    assert vllm.parent_span_id == upstream.span_id
    assert vllm.service == f"vllm-{backend}" and server.service == SERVICE
    assert upstream.attributes["quantroute.backend"] == backend
    assert vllm.attributes["gen_ai.usage.completion_tokens"] == usage.completion_tokens
    assert server.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
