"""`quantroute profile` against the two real vLLM servers writes a valid capability matrix.

The tiny model has random weights, so its measured quality is near zero and every task is
marked unstable: that is the honest answer, and the test insists on it rather than hiding it.
Latency, throughput and cost are real measurements of the CPU servers and must be positive.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from quantroute.config import TASK_TYPES
from quantroute.core.matrix import SCHEMA_VERSION, CapabilityMatrix

from .conftest import GROUP, VllmTier
from .procs import log_tail, run_bounded
from .stack import gateway_command, gateway_config

pytestmark = pytest.mark.vllm

SAMPLES_PER_TASK = 3
LEVELS = (1, 4)


@pytest.mark.timeout(600, func_only=True)  # the profile run itself is bounded at 480 s
def test_profiler_writes_a_valid_matrix_with_honest_near_zero_quality(
    vllm_tier: VllmTier, tmp_path: Path
) -> None:
    config_path = tmp_path / "gateway.yaml"
    config = gateway_config(list(vllm_tier.servers.values()), GROUP)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    matrix_path = tmp_path / "capability_matrix.json"
    argv = [
        *gateway_command(), "profile", "--config", str(config_path), "-o", str(matrix_path),
        "--samples-per-task", str(SAMPLES_PER_TASK),
        "--concurrency", ",".join(map(str, LEVELS)), "--rounds", "2",
        "--timeout-s", "120", "--quiet",
    ]  # fmt: skip

    code, out = run_bounded(argv, 480, tmp_path / "profile.log", env=os.environ)

    assert code == 0, f"profile exited {code}:\n{out}\n{log_tail(tmp_path / 'profile.log')}"
    matrix = CapabilityMatrix.model_validate_json(matrix_path.read_text())
    assert matrix.schema_version == SCHEMA_VERSION
    assert not matrix.partial
    assert set(matrix.variants) == set(vllm_tier.servers)
    for name, profile in matrix.variants.items():
        assert profile.error is None, (name, profile.error)
        assert profile.ttft_ms.p50 is not None and profile.ttft_ms.p50 > 0
        assert [p.concurrency for p in profile.throughput] == list(LEVELS)
        assert all(p.output_tokens_per_s > 0 and p.errors == 0 for p in profile.throughput)
        assert profile.cost_per_1m_output_tokens is not None
        assert profile.cost_per_1m_output_tokens > 0
        assert set(profile.tasks) == set(TASK_TYPES)
        for task, result in profile.tasks.items():
            assert result.samples == SAMPLES_PER_TASK, (name, task)
            assert result.errors == 0 and result.timeouts == 0, (name, task, result.reason)
            # Random weights: quality is (near) zero, so the task is unstable, with the reason.
            assert result.quality is not None and result.quality <= 0.34, (name, task)
            assert not result.stable and result.reason, (name, task)
