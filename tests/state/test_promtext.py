"""The metrics parser against every real vLLM capture, plus the aliases and aggregation rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantroute.state.promtext import parse_metrics
from quantroute.testing.fake_backend import FakeState, metrics_text

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vllm"
CAPTURES = sorted(FIXTURES.glob("vllm_metrics_*.txt"))


def test_captures_are_present() -> None:
    assert len(CAPTURES) >= 3


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_every_capture_parses_with_known_values(path: Path) -> None:
    m = parse_metrics(path.read_text())
    assert m.kv_metric_name == "vllm:kv_cache_usage_perc"
    assert m.kv_cache_usage is not None and 0.0 <= m.kv_cache_usage <= 1.0
    assert m.num_running is not None and m.num_waiting is not None
    assert m.block_size == 128 and m.num_gpu_blocks and m.model_names == ("tiny-llama",)


def test_constrained_capture_shows_pressure() -> None:
    m = parse_metrics((FIXTURES / "vllm_metrics_busy_constrained_kv.txt").read_text())
    assert (m.kv_cache_usage, m.num_running, m.num_waiting, m.num_gpu_blocks) == (1.0, 7.0, 1.0, 8)
    assert m.kv_capacity_tokens == 1024


def test_legacy_gpu_cache_name_is_read() -> None:
    m = parse_metrics(metrics_text(FakeState(kv_usage=0.42, legacy_kv_name=True)))
    assert (
        m.kv_cache_usage == pytest.approx(0.42) and m.kv_metric_name == "vllm:gpu_cache_usage_perc"
    )


def test_current_name_wins_when_both_present() -> None:
    text = (
        metrics_text(FakeState(kv_usage=0.3))
        + 'vllm:gpu_cache_usage_perc{engine="0",model_name="fake-model"} 0.9\n'
    )
    assert parse_metrics(text).kv_cache_usage == pytest.approx(0.3)


def test_missing_metrics_are_unknown_not_zero() -> None:
    m = parse_metrics("# TYPE other gauge\nother 1.0\n")
    assert m.kv_cache_usage is None and m.num_running is None and m.num_gpu_blocks is None


def test_engines_and_model_names_aggregate() -> None:
    text = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 3.0
vllm:num_requests_running{engine="1",model_name="b"} 4.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 1.0
vllm:num_requests_waiting{engine="1",model_name="b"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="b"} 0.8
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="300"} 1.0
"""
    m = parse_metrics(text)
    assert (m.num_running, m.num_waiting, m.num_gpu_blocks) == (7.0, 3.0, 400)
    assert m.kv_cache_usage == pytest.approx((0.2 * 100 + 0.8 * 300) / 400)
    assert m.model_names == ("a", "b")


def test_malformed_text_raises_value_error() -> None:
    with pytest.raises(ValueError):
        parse_metrics('vllm:num_requests_running{engine="0" 1.0\n')


@pytest.mark.parametrize(
    ("capture", "queries"),
    [("vllm_metrics_idle.txt", 0.0), ("vllm_metrics_busy.txt", 822.0)],
)
def test_prefix_cache_counters_are_read_from_real_vllm(capture: str, queries: float) -> None:
    m = parse_metrics((FIXTURES / capture).read_text())
    assert (m.prefix_cache_queries, m.prefix_cache_hits) == (queries, 0.0)
    assert m.prefix_hit_rate == (0.0 if queries else None)  # no query yet: unknown, not 0


def test_prefix_cache_counters_older_names_and_absence() -> None:
    older = (
        "# TYPE vllm:gpu_prefix_cache_queries counter\n"
        'vllm:gpu_prefix_cache_queries_total{engine="0",model_name="m"} 400.0\n'
        "# TYPE vllm:gpu_prefix_cache_hits counter\n"
        'vllm:gpu_prefix_cache_hits_total{engine="0",model_name="m"} 100.0\n'
    )
    m = parse_metrics(older)
    assert (m.prefix_cache_queries, m.prefix_cache_hits, m.prefix_hit_rate) == (400.0, 100.0, 0.25)
    absent = parse_metrics(metrics_text(FakeState(kv_usage=0.1)))
    assert (absent.prefix_cache_queries, absent.prefix_hit_rate) == (None, None)
