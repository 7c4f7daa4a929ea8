"""The other client APIs (Responses, Anthropic Messages, embeddings) leave the same trail:
they parse on their own routes, so their trail starts at the decision, without a parse span."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from quantroute.config import AccessLogConfig, parse_config
from quantroute.observe.access_log import AccessLog
from quantroute.observe.observer import Observer
from quantroute.observe.otel import OtelTracing
from quantroute.server.app import create_app
from quantroute.sim.fleet import SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

SERVED = {"gen": "llama3-8b-awq", "embed": "e5-mistral-7b"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, InMemorySpanExporter, Path]]:
    specs = [
        SimBackendSpec(id="gen", profile="llama3-8b-awq"),
        SimBackendSpec(id="embed", profile="e5-mistral-7b"),
    ]
    with run_fleet_in_thread(SimFleetConfig(time_scale=20, seed=3, backends=specs)) as fleet:
        rows = [
            {"id": b, "url": fleet.urls[b], "served_model_name": SERVED[b], "max_seq_len": 4096,
             "capacity": 16, **({"apis": ["embeddings"]} if b == "embed" else {})}
            for b in SERVED
        ]  # fmt: skip
        config = parse_config(
            {
                "backends": rows,
                "groups": [
                    {"name": "auto", "variants": ["gen"]},
                    {"name": "vec", "variants": ["embed"]},
                ],
                "policy": {"scrape_interval_s": 0.1},
            }
        )
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        log_path = tmp_path / "access.jsonl"
        observer = Observer(
            tracing=OtelTracing(provider), access_log=AccessLog(AccessLogConfig(path=str(log_path)))
        )
        gateway = GatewayThread(config, app=create_app(config, observer=observer)).start()
        try:

            def fresh() -> bool:
                rows = httpx.get(gateway.url + "/admin/backends").json()["backends"]
                return all(r["state"] == "fresh" for r in rows)

            assert wait_until(fresh, 10)
            yield gateway.url, exporter, log_path
        finally:
            gateway.stop()


def test_responses_messages_and_embeddings_each_leave_a_trace_and_a_log_line(
    stack: tuple[str, InMemorySpanExporter, Path],
) -> None:
    url, exporter, log_path = stack
    with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=60) as oai:
        oai.responses.create(model="auto", input="Say hello.", max_output_tokens=8)
        oai.embeddings.create(model="vec", input=["a sentence"])
    with anthropic.Anthropic(base_url=url, api_key="k", max_retries=0, timeout=60) as claude:
        claude.messages.create(
            model="auto", max_tokens=8, messages=[{"role": "user", "content": "Say hello."}]
        )

    def servers() -> list[str]:
        return sorted(s.name for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER)

    assert wait_until(lambda: len(servers()) == 3, 10)
    assert servers() == ["POST /v1/embeddings", "POST /v1/messages", "POST /v1/responses"]
    spans = exporter.get_finished_spans()
    for server in (s for s in spans if s.kind is SpanKind.SERVER):
        attrs = dict(server.attributes or {})
        assert attrs["http.response.status_code"] == 200 and attrs["quantroute.attempts"] == 1
        children = {
            s.name for s in spans if s.parent and s.parent.span_id == server.context.span_id
        }
        assert children == {"quantroute.decide", "quantroute.upstream"}
    by_path: dict[str, dict[str, Any]] = {
        s.name.split(" ", 1)[1]: dict(s.attributes or {})
        for s in spans
        if s.kind is SpanKind.SERVER
    }
    assert by_path["/v1/embeddings"]["quantroute.backend"] == "embed"
    assert by_path["/v1/messages"]["quantroute.backend"] == "gen"
    assert by_path["/v1/responses"]["gen_ai.usage.output_tokens"] > 0
    from_log: dict[str, tuple[int, str]] = {}
    assert wait_until(lambda: len(log_path.read_text().splitlines()) == 3, 10)
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        from_log[record["kind"]] = (record["status"], record["backend"])
    assert from_log == {
        "responses": (200, "gen"),
        "messages": (200, "gen"),
        "embeddings": (200, "embed"),
    }
