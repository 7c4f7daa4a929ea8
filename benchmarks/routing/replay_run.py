"""The routing policies replayed through the simulated fleet in simulated time (no HTTP), with
the clairvoyant floor, and ``quantroute tune`` judged on a holdout trace.

    python benchmarks/routing/replay_run.py              # results/replay/ + the README block
    python benchmarks/routing/replay_run.py --requests 500 --no-readme

Two traces from the benchmark's generator (seed 7 to tune on, seed 8 to report on), each with
20% batch traffic. Every policy of run.py is the same gateway config here, replayed by
``quantroute.replay`` (the routing core and state store over the simulator's engines); every
figure is from this one run. See benchmarks/routing/README.md ("Simulated replay and the floor").
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

from routingbench import policies  # noqa: E402

from quantroute.config import GatewayConfig  # noqa: E402
from quantroute.core.matrix import CapabilityMatrix  # noqa: E402
from quantroute.replay.measures import (  # noqa: E402
    Summary,
    assignment_floor_p99,
    floor_p99,
    floor_ttfts,
    summarise,
)
from quantroute.replay.simulate import replay  # noqa: E402
from quantroute.replay.synth import TraceParams, generate  # noqa: E402
from quantroute.replay.trace import TraceRow, load_trace  # noqa: E402
from quantroute.state.matrix_source import load_matrix  # noqa: E402
from quantroute.tune.candidates import Candidate, candidates  # noqa: E402
from quantroute.tune.pareto import choose, pareto  # noqa: E402
from quantroute.tune.search import evaluate, search  # noqa: E402

REPO = HERE.parent.parent
MATRIX = HERE / "capability_matrix.json"
FLOOR = 0.80
WAITING_LIMITS = (2, 4)
"""Replay-only rows: quantroute with the ``waiting`` filter, so a request whose every allowed
backend has this many requests in vLLM's waiting queue is saturated and waits in the gateway's
flow-control queue (interactive before batch) instead."""
MARKERS = ("<!-- replay-results:start -->", "<!-- replay-results:end -->")


def _config(spec: policies.PolicySpec) -> GatewayConfig:
    urls = {b["id"]: "http://127.0.0.1:9" for b in policies.demo_backends()}
    raw = policies.gateway_config(spec, urls, port=8080, time_scale=1.0, quality_floor=FLOOR,
                                  matrix_path=MATRIX if spec.matrix else None)  # fmt: skip
    return policies.validated(raw)


def _run_policies(
    rows: list[TraceRow], matrix: CapabilityMatrix, tuned: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    specs = [*policies.specs(), *policies.extras()]
    out: dict[str, dict[str, Any]] = {}
    reference = _config(next(s for s in specs if s.key == "quantroute"))
    for spec in specs:
        config = _config(spec)
        run = replay(rows, config, matrix if spec.matrix else None, model_for=spec.model_for)
        out[spec.key] = {"label": spec.label, **summarise(run, reference, matrix).as_dict()}
        # quality share against the quantroute group's floor for every policy (static tier's
        # groups have none of their own): the run's variant per request, judged alike
    for limit in WAITING_LIMITS:  # replay only: the gateway's queue in front of vLLM's
        filters = [*(f.model_dump(exclude_defaults=True) | {"name": f.name}
                     for f in reference.policy.filters),
                   {"name": "waiting", "parameters": {"limit": limit}}]  # fmt: skip
        cand = Candidate(f"waiting{limit}", {"policy": {"filters": filters}})
        out[f"flow_waiting_{limit}"] = {
            "label": f"quantroute + waiting filter ≥ {limit} (gateway queue)",
            **evaluate(rows, reference, matrix, cand).as_dict(),
        }
    if tuned is not None:
        cand = Candidate("tuned", tuned)
        out["tune_chosen"] = {"label": "quantroute, tuned by `quantroute tune` on seed 7",
                              **evaluate(rows, reference, matrix, cand).as_dict()}  # fmt: skip
    return out


def _ratios(table: dict[str, dict[str, Any]], floor: float | None) -> None:
    static = table["static_tier"]["ttft_p99_s"]
    big = table["all_70b"]["cost_per_1m"]
    for row in table.values():
        p99 = row["ttft_p99_s"]
        row["p99_x_floor"] = None if p99 is None or not floor else p99 / floor
        row["p99_x_static"] = None if p99 is None or not static else p99 / static
        row["cost_x_70b"] = (
            None if row["cost_per_1m"] is None or not big else row["cost_per_1m"] / big
        )


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Simulated replay (`python benchmarks/routing/replay_run.py`, {result['wall_s']:.0f} s "
        f"wall): {result['requests']} requests per trace, 20% batch, quality floor {FLOOR}, "
        "scrape every 0.5 simulated s; tuned on seed 7, reported on seed 8 (holdout).",
        "",
    ]
    for name, trace in result["traces"].items():
        lines += [
            f"**{name}** (floor: p99 TTFT {_fmt(trace['floor_p99_s'], '.3f')} s, each request "
            "alone on the fastest backend its floor allows; offline assignment bound: "
            f"{_fmt(trace['assignment_p99_s'], '.3f')} s; 1/6 of static tier: "
            f"{_fmt(trace['policies']['static_tier']['ttft_p99_s'] / 6, '.3f')} s)",
            "",
            "| policy | served | p50 TTFT | p99 TTFT | × floor | × static tier | batch p99 | "
            "$/1M profiled | × all-70B | meets floor | preempt. | queued in gateway |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for row in trace["policies"].values():
            lines.append(
                f"| {row['label']} | {row['served']}/{row['requests']} | "
                f"{_fmt(row['ttft_p50_s'], '.3f')} s | {_fmt(row['ttft_p99_s'], '.3f')} s | "
                f"×{_fmt(row['p99_x_floor'], '.2f')} | ×{_fmt(row['p99_x_static'], '.3f')} | "
                f"{_fmt(row['batch_ttft_p99_s'], '.2f')} s | {_fmt(row['cost_per_1m'], '.3f')} | "
                f"×{_fmt(row['cost_x_70b'], '.2f')} | {_fmt(row['quality_share'], '.1%')} | "
                f"{row['preemptions']} | {row['queued']} |"
            )
        lines.append("")
    h = result["http_run"]
    lines += [
        f"The committed gateway run over HTTP (`run.py`, trace `results/trace.jsonl`, no batch "
        f"traffic) against its own trace's floor (p99 {_fmt(h['floor_p99_s'], '.3f')} s): "
        + ", ".join(f"{k} ×{_fmt(v['p99_x_floor'], '.1f')}" for k, v in h["policies"].items())
        + ".",
        "",
    ]
    t = result["tuning"]
    lines += [
        f"`quantroute tune` on seed 7 ({t['candidates']} candidates, {t['wall_s']:.0f} s): "
        f"Pareto set of {len(t['pareto'])}; chosen for p99 TTFT: `{t['chosen_p99']}`, for cost: "
        f"`{t['chosen_cost']}`.",
        "",
        "| objective | chosen | tune trace: default → chosen | holdout: default → chosen | beats the default on the holdout |",
        "|---|---|--:|--:|---|",
    ]
    for row in t["holdout"]:
        lines.append(f"| {row['objective']} | `{row['chosen']}` | {row['tune']} | {row['holdout']} | "
                     f"{'yes' if row['beats'] else '**no**'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _metric(s: Summary, objective: str) -> float:
    value = {"p99_ttft": s.ttft_p99_s, "cost": s.cost_per_1m}[objective]
    return float("inf") if value is None else value


def _tune(tune_rows: list[TraceRow], holdout: list[TraceRow], matrix: CapabilityMatrix,
          count: int) -> dict[str, Any]:  # fmt: skip
    config = _config(next(s for s in policies.specs() if s.key == "quantroute"))
    started = time.monotonic()
    scored = search(tune_rows, config, matrix, candidates(config, count, seed=0), time_limit_s=1800)
    out: dict[str, Any] = {"candidates": len(scored), "pareto": [s.candidate.name for s in pareto(scored)],
                           "holdout": []}  # fmt: skip
    default = scored[0]
    base = evaluate(holdout, config, matrix, default.candidate)
    for objective in ("p99_ttft", "cost"):
        chosen = choose(scored, objective)
        mine = evaluate(holdout, config, matrix, chosen.candidate)
        unit = " s" if objective == "p99_ttft" else " $"
        out[f"chosen_{'p99' if objective == 'p99_ttft' else 'cost'}"] = chosen.candidate.name
        out[f"fragment_{objective}"] = chosen.candidate.fragment
        out["holdout"].append({
            "objective": objective, "chosen": chosen.candidate.name,
            "tune": f"{_metric(default.summary, objective):.3f} → {_metric(chosen.summary, objective):.3f}{unit}",
            "holdout": f"{_metric(base, objective):.3f} → {_metric(mine, objective):.3f}{unit}",
            "beats": _metric(mine, objective) < _metric(base, objective)
            and mine.refused <= base.refused
            and (mine.quality_share or 0) >= (base.quality_share or 0) - 0.005,
            "holdout_default": base.as_dict(), "holdout_chosen": mine.as_dict(),
        })  # fmt: skip
    out["wall_s"] = time.monotonic() - started
    return out


def _http_run(matrix: CapabilityMatrix) -> dict[str, Any]:
    """The committed gateway run (run.py, over HTTP) against the floor of its own trace."""
    rows = load_trace(HERE / "results" / "trace.jsonl")
    reference = _config(next(s for s in policies.specs() if s.key == "quantroute"))
    floor = floor_p99(floor_ttfts(rows, reference, matrix), rows)
    runs = json.loads((HERE / "results" / "results.json").read_text(encoding="utf-8"))["policies"]
    return {
        "floor_p99_s": floor,
        "policies": {r["label"]: {"ttft_p99_s": r["ttft_p99"],
                                  "p99_x_floor": r["ttft_p99"] / floor if floor else None}
                     for r in runs},
    }  # fmt: skip


def _readme(block: str) -> None:
    path = REPO / "README.md"
    text = path.read_text(encoding="utf-8")
    start, end = text.index(MARKERS[0]), text.index(MARKERS[1])
    path.write_text(text[: start + len(MARKERS[0])] + "\n" + block + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--out", type=Path, default=HERE / "results" / "replay")
    p.add_argument("--no-readme", action="store_true")
    args = p.parse_args(argv)
    started = time.monotonic()
    matrix = load_matrix(MATRIX)
    params = TraceParams(requests=args.requests, batch_share=0.2)
    traces = {f"seed {seed}": generate(replace(params, seed=seed)) for seed in (7, 8)}
    tuning = _tune(traces["seed 7"], traces["seed 8"], matrix, args.candidates)
    print(
        f"tuning: {json.dumps(tuning['holdout'][0]['holdout'])} {tuning['holdout'][1]['holdout']}",
        flush=True,
    )
    result: dict[str, Any] = {"requests": args.requests, "traces": {}, "tuning": tuning}
    reference = _config(next(s for s in policies.specs() if s.key == "quantroute"))
    for name, rows in traces.items():
        floors = floor_ttfts(rows, reference, matrix)
        floor = floor_p99(floors, rows)
        bound = assignment_floor_p99(rows, reference, matrix, floors)
        table = _run_policies(
            rows, matrix, tuning["fragment_p99_ttft"] if name == "seed 8" else None
        )
        _ratios(table, floor)
        result["traces"][name] = {
            "floor_p99_s": floor,
            "assignment_p99_s": bound,
            "policies": table,
        }
        print(
            name,
            json.dumps({k: (v["ttft_p99_s"], v["p99_x_floor"]) for k, v in table.items()}),
            flush=True,
        )
    result["http_run"] = _http_run(matrix)
    result["wall_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    block = _markdown(result)
    (args.out / "results.md").write_text(block, encoding="utf-8")
    if not args.no_readme:
        _readme(block)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
