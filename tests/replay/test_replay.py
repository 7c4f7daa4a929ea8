"""The trace replay through the simulated fleet: deterministic, the floor a lower bound, and both
trace formats read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quantroute.config import GatewayConfig, load_config
from quantroute.core.matrix import CapabilityMatrix
from quantroute.core.model import LatencyClass
from quantroute.errors import ConfigError
from quantroute.replay.measures import floor_p99, floor_ttfts, summarise
from quantroute.replay.simulate import replay
from quantroute.replay.synth import TraceParams, generate
from quantroute.replay.trace import load_trace
from quantroute.state.matrix_source import load_matrix

DEMO = Path(__file__).resolve().parents[2] / "src" / "quantroute" / "demo" / "gateway.yaml"


@pytest.fixture(scope="module")
def demo() -> tuple[GatewayConfig, CapabilityMatrix]:
    config = load_config(DEMO)
    assert config.matrix_path is not None
    return config, load_matrix(config.matrix_path)


def _params(seed: int) -> TraceParams:
    return TraceParams(requests=250, seed=seed, rate_per_s=8.0, batch_share=0.2)


def test_same_trace_config_and_seed_replay_identically(
    demo: tuple[GatewayConfig, CapabilityMatrix],
) -> None:
    config, matrix = demo
    rows = generate(_params(5))
    first, second = replay(rows, config, matrix), replay(rows, config, matrix)
    outcome = [
        (r.row.id, r.backend, r.status, r.ttft, r.end, r.output_tokens) for r in first.results
    ]
    assert outcome == [
        (r.row.id, r.backend, r.status, r.ttft, r.end, r.output_tokens) for r in second.results
    ]
    assert all(r.ok for r in first.results)
    assert len({r.backend for r in first.results}) > 1  # the router really chose
    other = replay(generate(_params(6)), config, matrix)
    assert [r.ttft for r in other.results] != [r.ttft for r in first.results]


def test_unknown_answer_lengths_are_drawn_from_the_seed(
    demo: tuple[GatewayConfig, CapabilityMatrix],
) -> None:
    config, matrix = demo
    from dataclasses import replace

    rows = [replace(r, output_tokens=None) for r in generate(_params(5))[:60]]
    a, b = replay(rows, config, matrix, seed=1), replay(rows, config, matrix, seed=1)
    c = replay(rows, config, matrix, seed=2)
    tokens = [r.output_tokens for r in a.results]
    assert tokens == [r.output_tokens for r in b.results]
    assert tokens != [r.output_tokens for r in c.results]


def test_no_request_beats_its_clairvoyant_floor(
    demo: tuple[GatewayConfig, CapabilityMatrix],
) -> None:
    config, matrix = demo
    rows = generate(_params(9))
    run = replay(rows, config, matrix)
    floors = floor_ttfts(rows, config, matrix)
    checked = 0
    for result, floor in zip(run.results, floors, strict=True):
        if result.ok and not result.relaxed:
            assert floor is not None
            assert result.ttft is not None and result.ttft >= floor - 1e-9, result.row.id
            checked += 1
    assert checked > 200
    summary = summarise(run, config, matrix)
    low = floor_p99(floors, rows)
    assert low is not None and summary.ttft_p99_s is not None and summary.ttft_p99_s >= low
    assert summary.served == summary.requests and summary.quality_share == 1.0


def test_a_decision_log_and_a_benchmark_trace_read_as_rows(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    lines = [
        {"ts": 1700000010.5, "request_id": "b", "api": "chat", "model": "auto", "task": "coding",
         "latency_class": "batch", "prompt_tokens": 900, "max_tokens": None, "status": 200,
         "completion_tokens": 40},
        {"ts": 1700000010.0, "request_id": "a", "api": "chat", "model": "auto", "task": "chat",
         "latency_class": "interactive", "prompt_tokens": 12, "max_tokens": 64, "status": 499,
         "completion_tokens": 3},
        {"ts": 1700000011.0, "request_id": "e", "api": "embeddings", "model": "auto",
         "task": "chat", "latency_class": "interactive", "prompt_tokens": 5, "max_tokens": None,
         "status": 200, "completion_tokens": 0},
    ]  # fmt: skip
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows = load_trace(log, default_max_tokens=300)
    assert [(r.id, r.t, r.output_tokens, r.max_tokens, r.latency_class) for r in rows] == [
        ("a", 0.0, None, 64, LatencyClass.INTERACTIVE),  # not answered in full: length unknown
        ("b", 0.5, 40, 300, LatencyClass.BATCH),
    ]
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"id":"r1","t":3.0,"task":"reasoning","tier":"premium","prompt_tokens":80,'
                     '"max_tokens":512,"output_tokens":20,"text_seed":4}\n')  # fmt: skip
    (row,) = load_trace(trace)
    assert (row.t, row.task, row.tier, row.output_tokens) == (0.0, "reasoning", "premium", 20)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 1, "task": "poetry", "prompt_tokens": 3}\n')
    with pytest.raises(ConfigError, match=re.escape("bad.jsonl:1: unknown task 'poetry'")):
        load_trace(bad)


def test_the_replay_learns_measured_latency_as_the_gateway_does(
    demo: tuple[GatewayConfig, CapabilityMatrix],
) -> None:
    """Each answered request's TTFT reaches the latency scorer (the replay's snapshot carries
    the measurement): decisions change when it is blended in, and only then."""
    config, matrix = demo
    rows = generate(_params(5))
    off_policy = config.policy.model_copy(update={"measured_latency": False})
    off = replay(rows, config.model_copy(update={"policy": off_policy}), matrix)
    again = replay(rows, config.model_copy(update={"policy": off_policy}), matrix)
    on = replay(rows, config, matrix)
    assert [r.backend for r in off.results] == [r.backend for r in again.results]
    assert [r.backend for r in on.results] != [r.backend for r in off.results]


def test_the_assignment_bound_counts_prompts_only_one_backend_holds_and_no_replay_beats_it(
    demo: tuple[GatewayConfig, CapabilityMatrix],
) -> None:
    """Three 20k-token prompts 0.1 s apart fit only Qwen's 32k context: whatever the policy,
    Qwen's GPU computes them one after the other, so the slowest of them waits for about two
    others' prefill; the idle floor does not see that, the assignment bound does."""
    from quantroute.replay.measures import assignment_floor_p99
    from quantroute.replay.trace import TraceRow

    config, matrix = demo
    long = [TraceRow(f"l{i}", 0.1 * i, "coding", 20_000, 1024, 50) for i in range(3)]
    short = [TraceRow(f"s{i}", 0.05 + 0.3 * i, "chat", 200, 256, 30) for i in range(10)]
    rows = sorted(long + short, key=lambda r: r.t)
    floors = floor_ttfts(rows, config, matrix)
    floor = floor_p99(floors, rows)
    bound = assignment_floor_p99(rows, config, matrix, floors)
    assert floor is not None and bound is not None
    assert bound > 2.5 * floor  # the third long prompt waits for the other two
    for mode in ("queue", "reject"):
        flow = config.policy.flow_control.model_copy(update={"on_saturation": mode})
        policy = config.policy.model_copy(update={"flow_control": flow})
        run = replay(rows, config.model_copy(update={"policy": policy}), matrix)
        summary = summarise(run, config, matrix)
        assert summary.served == 13 and summary.ttft_p99_s is not None
        assert summary.ttft_p99_s >= bound
    # on a trace where nothing overlaps, the bound is the floor
    apart = [r if r.id[0] == "s" else TraceRow(r.id, 100.0 * (1 + int(r.id[1])), r.task,
             r.prompt_tokens, r.max_tokens, r.output_tokens) for r in rows]  # fmt: skip
    apart.sort(key=lambda r: r.t)
    apart_floors = floor_ttfts(apart, config, matrix)
    assert assignment_floor_p99(apart, config, matrix, apart_floors) == pytest.approx(
        floor_p99(apart_floors, apart)
    )
