"""``quantroute tune --log decisions.jsonl --config gateway.yaml``: arguments, progress, report."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quantroute.config import GatewayConfig, load_config
from quantroute.core.matrix import CapabilityMatrix
from quantroute.errors import ConfigError
from quantroute.replay.trace import TraceRow, load_trace
from quantroute.state.matrix_source import load_matrix
from quantroute.tune.candidates import candidates
from quantroute.tune.pareto import OBJECTIVES, Objective, Scored, choose, pareto
from quantroute.tune.search import evaluate, search


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tune",
        help="replay a decision log through the simulated fleet under candidate policies",
        description="Replay logged traffic (decision log or benchmark trace) through the "
        "simulated fleet of the config, under candidate policies; report the Pareto set of p99 "
        "TTFT, cost per 1M output tokens and quality share; write the chosen policy.",
    )
    p.add_argument(
        "--log",
        type=Path,
        action="append",
        required=True,
        help="decision log or trace (JSONL); repeat for rotated files, oldest first",
    )
    p.add_argument("--config", type=Path, required=True, help="the gateway config")
    p.add_argument("--matrix", type=Path, default=None, help="default: the config's matrix_path")
    p.add_argument("--objective", choices=OBJECTIVES, default="p99_ttft")
    p.add_argument(
        "--candidates", type=int, default=24, help="policies tried, the default included"
    )
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds of search at most")
    p.add_argument("--seed", type=int, default=0, help="candidate draws and the simulated fleet")
    p.add_argument(
        "--holdout",
        type=Path,
        default=None,
        help="another log/trace: report default and chosen policy on it too",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("tuned-policy.yaml"),
        help="where the chosen policy is written as a config fragment",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG of the candidates (needs the profiler extra's matplotlib)",
    )
    p.add_argument("--json", type=Path, default=None, help="every candidate's figures as JSON")
    p.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="VARIANT=PROFILE",
        help="the simulator profile of a variant not named after one",
    )
    p.set_defaults(func=run)  # fmt: skip


def _profiles(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, profile = pair.partition("=")
        if not sep or not name or not profile:
            raise ConfigError(f"--profile {pair!r}: expected VARIANT=PROFILE")
        out[name] = profile
    return out


def _matrix(args: argparse.Namespace, config: GatewayConfig) -> CapabilityMatrix | None:
    path = args.matrix or config.matrix_path
    return None if path is None else load_matrix(path)


def _secs(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f} s"


def _table(title: str, rows: Sequence[Scored], chosen: Scored | None = None) -> Table:
    table = Table(title=title)
    for col in ("policy", "p99 TTFT", "p50 TTFT", "$/1M out", "quality share", "refused", "queued"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for s in rows:
        m = s.summary
        mark = " ★" if chosen is not None and s is chosen else ""
        table.add_row(
            s.candidate.name + mark, _secs(m.ttft_p99_s), _secs(m.ttft_p50_s),
            "–" if m.cost_per_1m is None else f"{m.cost_per_1m:.3f}",
            "–" if m.quality_share is None else f"{m.quality_share:.1%}", str(m.refused),
            str(m.queued),
        )  # fmt: skip
    return table


def _search(args: argparse.Namespace, rows: list[TraceRow], config: GatewayConfig,
            matrix: CapabilityMatrix | None, profiles: dict[str, str]) -> list[Scored]:  # fmt: skip
    pool = candidates(config, max(1, args.candidates), args.seed)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(f"replaying {len(rows)} requests", total=len(pool))
        return search(
            rows, config, matrix, pool, seed=args.seed, time_limit_s=args.time_limit,
            profiles=profiles, on_result=lambda _: progress.advance(task),
        )  # fmt: skip


def _write(args: argparse.Namespace, chosen: Scored, objective: Objective) -> None:
    header = (f"# quantroute tune --objective {objective}: candidate {chosen.candidate.name}\n"
              "# merge over your gateway config (policy keys replace, groups replace)\n")  # fmt: skip
    body = yaml.safe_dump(chosen.candidate.fragment or {"policy": {}}, sort_keys=False)
    args.out.write_text(header + body, encoding="utf-8")


def _dump(scored: Sequence[Scored], front: Sequence[Scored], chosen: Scored) -> dict[str, Any]:
    return {
        "chosen": chosen.candidate.name,
        "pareto": [s.candidate.name for s in front],
        "candidates": [
            {"name": s.candidate.name, "fragment": s.candidate.fragment, **s.summary.as_dict()}
            for s in scored
        ],
    }


def run(args: argparse.Namespace) -> int:
    if args.plot is not None:
        from quantroute.extras import require

        require("profiler", "tune --plot", "matplotlib")
    console = Console()
    config = load_config(args.config)
    matrix = _matrix(args, config)
    profiles = _profiles(args.profile)
    rows = load_trace(*args.log, default_max_tokens=config.policy.default_max_tokens)
    scored = _search(args, rows, config, matrix, profiles)
    front = pareto(scored)
    chosen = choose(scored, args.objective)
    default = scored[0]
    console.print(_table(f"Pareto set ({len(front)} of {len(scored)} policies tried)",
                         [*front, *([default] if default not in front else [])], chosen))  # fmt: skip
    console.print(f"chosen for {args.objective}: [bold]{chosen.candidate.name}[/bold]")
    _write(args, chosen, args.objective)
    console.print(f"policy fragment written to {args.out}")
    if args.holdout is not None:
        held = load_trace(args.holdout, default_max_tokens=config.policy.default_max_tokens)
        on_holdout = [Scored(s.candidate, evaluate(held, config, matrix, s.candidate,
                                                   seed=args.seed, profiles=profiles))
                      for s in ([default] if chosen is default else [default, chosen])]  # fmt: skip
        console.print(_table(f"holdout: {args.holdout} ({len(held)} requests)", on_holdout))
    if args.json is not None:
        args.json.write_text(json.dumps(_dump(scored, front, chosen), indent=1) + "\n", "utf-8")
    if args.plot is not None:
        from quantroute.tune.plot import plot_candidates

        console.print(f"plot: {plot_candidates(scored, front, chosen, args.plot)}")
    return 0
