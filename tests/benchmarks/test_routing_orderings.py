"""A small routing benchmark: real gateway processes in front of fresh simulated fleets.

Only orderings that hold by construction are asserted, never speed figures:

* quantroute never routes a request to a backend its own decision rejected (KV ceiling or KV
  pressure among the reasons), and under tight KV caches it does steer away (the check is not
  vacuous).

How widely least loaded and round robin spread a burst depends on real-time scheduling on a
loaded machine: that comparison is a figure of the benchmark itself, and its ordering is tested
deterministically in ``tests/state/test_burst_spread.py``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from routingbench import bench, capability, fleet_proc, policies, workload

TIME_SCALE = 4.0
MATRIX = Path(__file__).resolve().parents[2] / "benchmarks" / "routing" / capability.MATRIX_FILE
REJECTED = re.compile(r"(\S+)!")
TIGHT_KV = {
    "llama3-8b-awq": 640,
    "llama3-8b-fp16": 640,
    "llama3-70b-awq": 640,
    "qwen25-7b-gptq": 2200,
}
"""KV blocks of 16 tokens: about 10k tokens per 8k backend, 35k for the 32k one."""

pytestmark = pytest.mark.timeout(240)


def _burst(requests: int, rate: float, seed: int) -> list[workload.TraceRequest]:
    params = workload.TraceParams(
        seed=seed, requests=requests, rate_per_s=rate, burst_factor=1.0, long_share=0.0
    )
    rows, _ = workload.generate(params)
    return rows


def _run(
    key: str, rows: list[workload.TraceRequest], tmp: Path, kv_blocks: dict[str, int] | None = None
) -> bench.PolicyRun:
    spec = next(s for s in policies.specs() if s.key == key)
    key_path = tmp / "answer_key.json"
    if not key_path.exists():
        fleet_proc.write_answer_key(key_path, rows)
    settings = bench.RunSettings(
        time_scale=TIME_SCALE,
        quality_floor=0.0,
        matrix_path=MATRIX,
        work_dir=tmp,
        kv_blocks=kv_blocks or {},
    )
    return bench.run_policy(spec, key_path, rows, settings)


def test_quantroute_never_routes_past_its_kv_filters(tmp_path: Path) -> None:
    rows = _burst(160, 40.0, seed=11)
    rows = [replace(r, output_tokens=min(r.max_tokens, (r.output_tokens or 0) + 300)) for r in rows]
    run = _run("quantroute", rows, tmp_path, TIGHT_KV)
    kinds = {o.status for o in run.outcomes}
    assert kinds <= {200, 503}, kinds
    steered = 0
    for outcome in run.outcomes:
        if outcome.status != 200:
            continue
        assert outcome.decision is not None and outcome.backend is not None
        rejected = set(REJECTED.findall(outcome.decision))
        assert outcome.backend not in rejected, outcome.decision
        steered += "kv_pressure:" in outcome.decision or "kv_ceiling:" in outcome.decision
    assert steered > 0, "no KV pressure arose: the check above proved nothing"
