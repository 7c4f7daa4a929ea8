"""Measure each variant's prefill rate: the matrix field the profiler does not fill in yet.

The gateway's latency estimate adds ``(prefill backlog + prompt) / prefill_tokens_per_s``; without a
measured rate it assumes ``policy.default_prefill_tokens_per_s`` (5000) for every backend, which
makes a 70B on one H100 (about 2.8k prompt tokens/s in the simulator) and an 8B on an H100 (about
31k) look alike. This probe starts a fresh simulated fleet and sends each idle backend, one at a
time, a ``PROBE_TOKENS``-token prompt with ``max_tokens`` 1, ``REPEATS`` times: rate = prompt
tokens / median TTFT (simulated seconds). The rates are written into the cached matrix, and the
provenance file says so.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from routingbench import policies, procs, textgen

PROBE_TOKENS = 6000
REPEATS = 3
TIME_SCALE = 0.5


def _ttft_s(client: httpx.Client, url: str, model: str, text: str) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 1,
        "stream": True,
    }
    started = time.monotonic()
    with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:"):
                return (time.monotonic() - started) * TIME_SCALE
    raise RuntimeError(f"{url}: no data line in the probe's response")


def measure(work_dir: Path) -> dict[str, float]:
    """Prefill tokens per second per backend id (== variant in the default fleet)."""
    text = textgen.prose(random.Random(1), PROBE_TOKENS * 4)[: PROBE_TOKENS * 4]
    stats = work_dir / "probe.fleet.json"
    cmd = procs.fleet_command(TIME_SCALE, 0, None, stats)
    fleet = procs.start("probe-fleet", cmd, work_dir, stdout_pipe=True)
    rates: dict[str, float] = {}
    with procs.running(fleet), httpx.Client(timeout=120.0, trust_env=False) as client:
        urls = procs.read_json_line(fleet, 60)["urls"]
        for row in policies.demo_backends():
            samples = [
                _ttft_s(client, urls[row["id"]], row["served_model_name"], text)
                for _ in range(REPEATS)
            ]
            rates[row["id"]] = PROBE_TOKENS / statistics.median(samples)
    return rates


def add_to_matrix(matrix_path: Path, provenance_path: Path, work_dir: Path) -> None:
    rates = measure(work_dir)
    matrix: dict[str, Any] = json.loads(matrix_path.read_text(encoding="utf-8"))
    for variant, rate in rates.items():
        if variant in matrix["variants"]:
            matrix["variants"][variant]["prefill_tokens_per_s"] = round(rate, 1)
    matrix_path.write_text(json.dumps(matrix, indent=2) + "\n", encoding="utf-8")
    provenance: dict[str, Any] = {}
    if provenance_path.exists():
        provenance = json.loads(provenance_path.read_text(encoding="utf-8"))
    provenance["prefill_tokens_per_s"] = (
        f"measured by benchmarks/routing/routingbench/prefill_probe.py, not the profiler: "
        f"{PROBE_TOKENS}-token prompt, max_tokens 1, median of {REPEATS} on an idle backend, "
        f"time scale {TIME_SCALE}"
    )
    provenance_path.write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
