"""The metric-schema self-test over real vLLM captures and over pages that lack names."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantroute.state.metric_schema import check_schema
from quantroute.state.promtext import parse_metrics

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vllm"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("vllm_metrics_*.txt")))
def test_real_vllm_pages_pass(name: str) -> None:
    report = check_schema(parse_metrics((FIXTURES / name).read_text()))
    assert report.ok and report.as_dict() == {"ok": True, "missing": [], "fallback": ""}


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("# TYPE node_load1 gauge\nnode_load1 0.5\n", 4),  # some other exporter: a wrong port
        ('vllm:num_requests_running{engine="0"} 1\nvllm:num_requests_waiting{engine="0"} 0\n', 2),
        ('sglang:token_usage{engine="0"} 0.3\n', 4),  # another engine's names
    ],
)
def test_pages_without_the_names_routing_reads(text: str, missing: int) -> None:
    report = check_schema(parse_metrics(text))
    assert not report.ok and len(report.missing) == missing
    assert "vllm:kv_cache_usage_perc" in report.missing
    assert "kv_ceiling turns the backend away" in report.describe()
