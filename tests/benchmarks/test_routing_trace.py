"""The routing benchmark's trace: seeded, round-trips through JSONL, prompts sized and typed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from routingbench import policies, workload
from routingbench.analysis import percentile, servable

from quantroute.core.features import chat_text, classify_task, estimate_chat_tokens
from quantroute.sim.text import split_pieces

SMALL = workload.TraceParams(requests=150, long_share=0.1)


@pytest.fixture(scope="module")
def trace() -> list[workload.TraceRequest]:
    rows, _ = workload.generate(SMALL)
    return rows


def test_same_seed_same_trace(trace: list[workload.TraceRequest]) -> None:
    again, _ = workload.generate(SMALL)
    assert [r.to_json() for r in again] == [r.to_json() for r in trace]
    other, _ = workload.generate(replace(SMALL, seed=SMALL.seed + 1))
    assert [r.to_json() for r in other] != [r.to_json() for r in trace]


def test_prompts_match_their_size_and_task(trace: list[workload.TraceRequest]) -> None:
    long_ones = [r for r in trace if r.prompt_tokens > 6000]
    assert long_ones, "the long-context tail is missing"
    for row in trace:
        messages = workload.messages_for(row)
        assert estimate_chat_tokens(messages, 4) == row.prompt_tokens
        assert classify_task(chat_text(messages)) == row.task


def test_arrivals_are_sorted_and_bursty(trace: list[workload.TraceRequest]) -> None:
    times = [r.t for r in trace]
    assert times == sorted(times)
    params = replace(SMALL, requests=3000, long_share=0.0)
    rows, windows = workload.generate(params)
    assert windows
    inside = sum(1 for r in rows if any(a <= r.t < b for a, b in windows))
    covered = sum(min(b, rows[-1].t) - a for a, b in windows)
    rate_in, rate_out = inside / covered, (len(rows) - inside) / (rows[-1].t - covered)
    assert rate_in > 2 * rate_out


def test_jsonl_round_trip_and_user_messages(
    tmp_path: Path, trace: list[workload.TraceRequest]
) -> None:
    path = tmp_path / "trace.jsonl"
    workload.save(path, trace)
    first = json.loads(path.read_text().splitlines()[0])
    assert "messages" not in first  # synthesised text is rebuilt from text_seed, not stored
    loaded = workload.load(path)
    assert [r.to_json() for r in loaded] == [r.to_json() for r in trace]
    own = tmp_path / "own.jsonl"
    messages = [{"role": "user", "content": "hello " * 50}]
    row = {"t": 5.0, "task": "chat", "messages": messages}
    own.write_text(json.dumps(row) + "\n" + json.dumps({**row, "t": 2.0}) + "\n")
    mine = workload.load(own)
    assert [r.t for r in mine] == [0.0, 3.0]
    assert mine[0].prompt_tokens == estimate_chat_tokens(messages, 4)


def test_answer_key_fixes_each_output_length(trace: list[workload.TraceRequest]) -> None:
    key = workload.answer_key(trace)
    assert len(key) == len(trace)  # unique last user messages
    for row in trace:
        task, answer = key[row.last_user_text()]
        assert task == row.task
        assert len(split_pieces(answer)) == row.output_tokens


def test_policies_are_valid_gateway_configs(tmp_path: Path) -> None:
    matrix = tmp_path / "m.json"
    matrix.write_text("{}")
    urls = {b: f"http://127.0.0.1:{9000 + i}" for i, b in enumerate(policies.ALL)}
    for spec in policies.specs():
        config = policies.validated(
            policies.gateway_config(
                spec, urls, port=1, time_scale=2.0, quality_floor=0.8, matrix_path=matrix
            )
        )
        assert config.policy.scrape_interval_s == pytest.approx(0.25)
        assert (config.matrix_path is not None) == spec.matrix


def test_servable_and_percentile() -> None:
    fleet = {"a": {"max_seq_len": 8192}, "b": {"max_seq_len": 32768}}
    row = workload.TraceRequest("x", 0.0, "chat", "standard", 30000, 512, text_seed=1)
    assert servable(row, fleet)
    assert not servable(replace(row, prompt_tokens=32500), fleet)
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([], 99) is None
