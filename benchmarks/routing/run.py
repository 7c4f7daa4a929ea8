"""Routing-policy benchmark: one trace, seven gateway policies, each on a fresh simulated fleet.

    python benchmarks/routing/run.py                 # full run; writes results/ and the README block
    python benchmarks/routing/run.py --quick         # small trace, results/quick/, README untouched
    python benchmarks/routing/run.py --trace my.jsonl  # replay your own trace (same JSONL format)

See benchmarks/routing/README.md for the trace format, the definitions and the analysis.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from routingbench import analysis, bench, capability, fleet_proc, policies, report, workload  # noqa: E402

REPO = HERE.parent.parent
DEFAULT_TIME_SCALE = 2.0
QUICK_REQUESTS = 400


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK_REQUESTS} requests, results/quick/"
    )
    p.add_argument("--trace", type=Path, default=None, help="replay this JSONL trace")
    p.add_argument("--requests", type=int, default=None, help="generated trace size")
    p.add_argument("--rate", type=float, default=None, help="generated mean arrivals per second")
    p.add_argument("--seed", type=int, default=None, help="generated trace seed")
    p.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help=f"simulated seconds per wall second (default {DEFAULT_TIME_SCALE})",
    )
    p.add_argument("--quality-floor", type=float, default=0.80)
    p.add_argument(
        "--policy",
        action="append",
        default=None,
        choices=[s.key for s in (*policies.specs(), *policies.extras())],
        help="run only these (repeatable)",
    )
    p.add_argument(
        "--task-header",
        action="store_true",
        help="send x-quantroute-task instead of letting the gateway infer the task",
    )
    p.add_argument("--reprofile", action="store_true", help="make the capability matrix again")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--no-extras", action="store_true", help="only the issue's seven policies")
    return p.parse_args(argv)


def _trace(
    args: argparse.Namespace, out: Path
) -> tuple[list[workload.TraceRequest], dict[str, Any]]:
    if args.trace is not None:
        rows = workload.load(args.trace)
        return rows, {"source": str(args.trace), "requests": len(rows)}
    params = workload.TraceParams()
    overrides = {
        "requests": args.requests or (QUICK_REQUESTS if args.quick else None),
        "rate_per_s": args.rate,
        "seed": args.seed,
    }
    params = replace(params, **{k: v for k, v in overrides.items() if v is not None})
    rows, windows = workload.generate(params)
    workload.save(out / "trace.jsonl", rows)
    info = {"source": "generated", **params.describe(), "burst_windows_s": windows}
    (out / "trace_params.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return rows, info


def _describe_trace(rows: list[workload.TraceRequest]) -> dict[str, Any]:
    n = len(rows)
    tasks = {
        t: sum(r.task == t for r in rows) for t in ("coding", "reasoning", "extraction", "chat")
    }
    prompts = sorted(r.prompt_tokens for r in rows)
    return {
        "requests": n,
        "duration_s": round(rows[-1].t, 1),
        "mean_rate_per_s": round(n / max(rows[-1].t, 1e-9), 2),
        "tasks": tasks,
        "premium": sum(r.tier == "premium" for r in rows),
        "prompt_tokens_p50": prompts[n // 2],
        "prompt_tokens_mean": round(sum(prompts) / n),
        "prompts_over_6k": sum(p > 6000 for p in prompts),
        "too_long_for_8k_backends": sum(r.prompt_tokens + r.max_tokens > 8192 for r in rows),
        "output_tokens_mean": round(sum(r.output_tokens or 0 for r in rows) / n),
    }


def _dump(path: Path, run: bench.PolicyRun) -> None:
    """Every request's outcome, one JSON object a line (work/, not committed)."""
    with path.open("w", encoding="utf-8") as fh:
        for outcome in run.outcomes:
            fh.write(json.dumps(asdict(outcome)) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    started = time.monotonic()
    out = args.out or (HERE / "results" / ("quick" if args.quick else ""))
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    rows, trace_info = _trace(args, out)
    summary = _describe_trace(rows)
    print(f"trace: {json.dumps(summary)}", flush=True)
    key_path = work / "answer_key.json"
    fleet_proc.write_answer_key(key_path, rows)
    matrix_path = capability.ensure(HERE, work, reprofile=args.reprofile)
    matrix = capability.load_matrix(matrix_path)
    settings = bench.RunSettings(
        time_scale=args.time_scale,
        quality_floor=args.quality_floor,
        matrix_path=matrix_path,
        work_dir=work,
        task_header=args.task_header,
    )
    every = (*policies.specs(), *([] if args.no_extras else policies.extras()))
    chosen = [s for s in every if args.policy is None or s.key in args.policy]
    stats: list[analysis.PolicyStats] = []
    ttfts: dict[str, list[float]] = {}
    for spec in chosen:
        t0 = time.monotonic()
        run = bench.run_policy(spec, key_path, rows, settings)
        s = analysis.summarise(run, rows, quality_floor=args.quality_floor, matrix=matrix)
        stats.append(s)
        _dump(work / f"{spec.key}.outcomes.jsonl", run)
        ttfts[spec.key] = [((o.first or 0) - o.due) * args.time_scale for o in run.outcomes if o.ok]
        print(
            f"{spec.label:28s} served {s.served}/{s.requests}  p99 TTFT {report.secs(s.ttft_p99)}"
            f"  $/1M {report.money(s.cost_fixed)}  quality {report.pct(s.quality_vs_70b)}"
            f"  preempt {s.preemptions}  max lag {s.max_fleet_lag_s:.3f}s  ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    context = {
        "trace": trace_info,
        "trace_summary": summary,
        "time_scale": args.time_scale,
        "quality_floor": args.quality_floor,
        "task_header": args.task_header,
        "matrix": str(matrix_path.relative_to(REPO))
        if matrix_path.is_relative_to(REPO)
        else str(matrix_path),
        "wall_s": round(time.monotonic() - started, 1),
    }
    write_readme = not (args.quick or args.trace or args.no_readme or args.policy)
    report.write(out, stats, ttfts, context, readme=REPO / "README.md" if write_readme else None)
    print(f"results in {out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
