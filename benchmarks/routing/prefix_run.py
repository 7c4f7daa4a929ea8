"""Prefix-aware routing benchmark: one trace with sessions, five policies, four replicas.

    python benchmarks/routing/prefix_run.py              # results/prefix/ and the README block
    python benchmarks/routing/prefix_run.py --duration 60 --no-readme   # a short look

Each policy gets a fresh simulated fleet (``prefix/fleet.yaml``: four replicas of one variant)
and its own gateway; the trace (``routingbench.sessions``) mixes multi-turn conversations,
questions on shared documents and one-shot requests. See benchmarks/routing/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from routingbench import bench, capability, fleet_proc, prefix_bench, sessions  # noqa: E402

REPO = HERE.parent.parent
FLEET = HERE / "prefix" / "fleet.yaml"
DEFAULT_TIME_SCALE = 1.0

PREFIX_POLICY: dict[str, Any] = {
    "scorers": {
        "interactive": [
            {"name": "headroom", "weight": 0.4},
            {"name": "latency", "weight": 0.45},
            {"name": "cost", "weight": 0.15},
            {"name": "prefix", "weight": 0.3},
        ],
        "batch": [
            {"name": "headroom", "weight": 0.35},
            {"name": "latency", "weight": 0.1},
            {"name": "cost", "weight": 0.55},
            {"name": "prefix", "weight": 0.2},
        ],
    }
}
"""quantroute's default scorers plus the prefix scorer (balance guard at its defaults: 8
requests and 1.5x ahead of the least loaded candidate)."""
CACHE_AWARE_POLICY: dict[str, Any] = {
    "filters": ["context"],
    "scorers": {
        "interactive": [{"name": "cache_aware", "weight": 1.0}],
        "batch": [{"name": "cache_aware", "weight": 1.0}],
    },
    "tie_tolerance": 0.0,
}
"""vllm-router's cache_aware defaults (threshold 0.3, balance 64 / 1.5) over the same index."""


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=None, help="simulated seconds of arrivals")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE)
    p.add_argument("--policy", action="append", default=None, help="run only these (repeatable)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-readme", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    started = time.monotonic()
    out = args.out or HERE / "results" / "prefix"
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    params = sessions.SessionParams()
    overrides = {"duration_s": args.duration, "seed": args.seed}
    params = replace(params, **{k: v for k, v in overrides.items() if v is not None})
    rows = sessions.generate_mixed(params)
    summary = sessions.describe(rows)
    print(f"trace: {json.dumps(summary)}", flush=True)
    (out / "trace_params.json").write_text(
        json.dumps(params.describe(), indent=1) + "\n", encoding="utf-8"
    )
    key_path = work / "answer_key.json"
    fleet_proc.write_answer_key(key_path, rows)
    matrix_path = capability.ensure(HERE, work, reprofile=False)
    settings = bench.RunSettings(
        time_scale=args.time_scale,
        quality_floor=0.0,
        matrix_path=matrix_path,
        work_dir=work,
        fleet_file=FLEET,
    )
    chosen = [
        s
        for s in prefix_bench.specs(PREFIX_POLICY, CACHE_AWARE_POLICY)
        if args.policy is None or s.key in args.policy
    ]
    stats: list[prefix_bench.PrefixStats] = []
    for spec in chosen:
        t0 = time.monotonic()
        run = bench.run_policy(spec, key_path, rows, settings)
        s = prefix_bench.summarise(run, rows)
        stats.append(s)
        with (work / f"{spec.key}.outcomes.jsonl").open("w", encoding="utf-8") as fh:
            for outcome in run.outcomes:
                fh.write(json.dumps(outcome.__dict__) + "\n")
        print(
            f"{spec.label:36s} served {s.served}/{s.requests}  hit {s.hit_rate or 0:.1%}  "
            f"prefill {s.prefill_gpu_s:.1f} GPU-s  p99 TTFT {s.ttft_p99 or 0:.2f}s  "
            f"busiest {s.busiest_share:.0%}  max lag {s.max_lag_s:.3f}s  "
            f"({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    context = {
        "trace_summary": summary,
        "time_scale": args.time_scale,
        "wall_s": round(time.monotonic() - started, 1),
    }
    block = prefix_bench.write(out, stats, context)
    if not (args.no_readme or args.policy or args.duration):
        prefix_bench.update_readme(REPO / "README.md", block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
