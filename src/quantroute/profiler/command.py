"""``quantroute profile`` and ``quantroute matrix show|plot``: arguments in, one call, exit code out."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from rich.console import Console

from quantroute.config import TASK_TYPES, load_config
from quantroute.extras import require
from quantroute.profiler.settings import DEFAULT_LEVELS, DEFAULT_PREFILL_TOKENS, ProfileSettings
from quantroute.workloads import Suite, builtin_suites, load_suite

DEFAULT_OUTPUT = "capability_matrix.json"
INTERRUPTED = 130

if TYPE_CHECKING:
    from quantroute.profiler.runner import Progress
    from quantroute.profiler.session import ProfileSession

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("every value must be a positive integer")
    return levels


def _add_profile(sub: SubParsers) -> None:
    p = sub.add_parser("profile", help="measure every variant and write the capability matrix")
    p.add_argument("--config", required=True, help="gateway YAML file (its backends are profiled)")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help=f"matrix file (default: the config's matrix_path, else {DEFAULT_OUTPUT})",
    )
    p.add_argument(
        "--suite",
        action="append",
        default=[],
        metavar="FILE.jsonl",
        help="add a workload suite (repeatable)",
    )
    p.add_argument("--no-builtin", action="store_true", help="skip the packaged suites")
    p.add_argument(
        "--task",
        action="append",
        choices=TASK_TYPES,
        default=None,
        help="profile only this task type (repeatable)",
    )
    p.add_argument("--variant", action="append", default=[], help="profile only this variant")
    p.add_argument(
        "--samples-per-task",
        type=int,
        default=None,
        help="use the first N samples of each task type (default: all)",
    )
    p.add_argument(
        "--latency-concurrency",
        type=int,
        default=4,
        help="requests in flight while the graded samples run (default 4)",
    )
    p.add_argument(
        "--concurrency",
        type=_levels,
        default=DEFAULT_LEVELS,
        help="sweep levels, comma-separated (default 1,8,32,128)",
    )
    p.add_argument(
        "--prefill-tokens",
        type=_levels,
        default=DEFAULT_PREFILL_TOKENS,
        help="prompt lengths of the prefill probe, comma-separated (default 512,1024,2048,4096)",
    )
    p.add_argument(
        "--prefill-repeats",
        type=int,
        default=3,
        help="requests per prompt length in the prefill probe; 0 skips it (default 3)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="requests per level = max(level x rounds, 16) (default 3)",
    )
    p.add_argument(
        "--quality-floor",
        type=float,
        default=0.5,
        help="pass rate below which a task type is unstable (default 0.5)",
    )
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=0.05,
        help="failed+timed-out share above which a task or level is unstable (0.05)",
    )
    p.add_argument(
        "--ttft-slo-ms",
        type=float,
        default=None,
        help="a sweep level counts as stable only if its TTFT p95 is within this",
    )
    p.add_argument("--timeout-s", type=float, default=120.0, help="per request, real seconds")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="the backends' simulated seconds per wall second (simulator only)",
    )
    p.add_argument(
        "--max-parallel", type=int, default=None, help="backends profiled at once (default: all)"
    )
    p.add_argument("--api-key", default="EMPTY", help="bearer token for the backends")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no table")
    p.set_defaults(func=profile_main)


def _add_matrix(sub: SubParsers) -> None:
    m = sub.add_parser("matrix", help="inspect a capability matrix")
    msub = m.add_subparsers(dest="matrix_command", required=True)
    show = msub.add_parser("show", help="print the matrix as tables")
    show.add_argument("file")
    show.set_defaults(func=show_main)
    plot = msub.add_parser("plot", help="draw cost against quality per task type")
    plot.add_argument("file")
    plot.add_argument("-o", "--output", required=True, help="image file (e.g. matrix.png)")
    plot.set_defaults(func=plot_main)


def register(sub: SubParsers) -> None:
    """Add ``profile`` and ``matrix`` to the ``quantroute`` command's subparsers."""
    _add_profile(sub)
    _add_matrix(sub)


def settings_of(args: argparse.Namespace) -> ProfileSettings:
    return ProfileSettings(
        tasks=tuple(args.task) if args.task else TASK_TYPES,
        samples_per_task=args.samples_per_task,
        latency_concurrency=args.latency_concurrency,
        concurrency_levels=args.concurrency,
        rounds_per_level=args.rounds,
        prefill_prompt_tokens=args.prefill_tokens,
        prefill_repeats=args.prefill_repeats,
        quality_floor=args.quality_floor,
        max_error_rate=args.max_error_rate,
        ttft_slo_ms=args.ttft_slo_ms,
        request_timeout_s=args.timeout_s,
        time_scale=args.time_scale,
        api_key=args.api_key,
        variants=tuple(args.variant),
        max_parallel=args.max_parallel,
    )


def suites_of(args: argparse.Namespace) -> list[Suite]:
    suites = [] if args.no_builtin else list(builtin_suites())
    return suites + [load_suite(path) for path in args.suite]


def _run(session: ProfileSession, progress: Progress) -> bool:
    """Profile; True when it ran to the end, False when Ctrl-C stopped it."""
    try:
        asyncio.run(session.run(progress))
    except KeyboardInterrupt:
        return False
    return True


def profile_main(args: argparse.Namespace) -> int:
    # The OpenAI client is the profiler extra's: imported only here, after the check.
    require("profiler", "profile", "openai", "httpx2")
    from quantroute.profiler.runner import no_progress
    from quantroute.profiler.session import ProfileSession, write_matrix

    err = Console(stderr=True)
    config = load_config(args.config)
    try:
        session = ProfileSession(config, suites_of(args), settings_of(args))
    except (ValidationError, ValueError) as exc:
        err.print(f"error: {exc}", highlight=False)
        return 2
    output = Path(args.output or config.matrix_path or DEFAULT_OUTPUT)
    for target in session.targets:
        if target.gpu_cost_per_hour <= 0:
            err.print(f"note: {target.variant} has no gpu_cost_per_hour; its cost stays unknown")
    if args.quiet:
        complete = _run(session, no_progress)
    else:
        from quantroute.profiler.progress import RichProgress

        with RichProgress(err) as progress:
            complete = _run(session, progress)
    matrix = session.matrix(partial=not complete)
    write_matrix(matrix, output)
    if not args.quiet:
        from quantroute.profiler.show import show

        show(matrix, str(output), _stdout())
    state = "complete" if complete else "PARTIAL (interrupted)"
    err.print(f"wrote {output}: {len(matrix.variants)} variant(s), {state}", highlight=False)
    return 0 if complete else INTERRUPTED


def _stdout() -> Console:
    """The console for tables: wide enough for them when writing to a file or pipe."""
    return Console() if sys.stdout.isatty() else Console(width=150)


def show_main(args: argparse.Namespace) -> int:
    from quantroute.profiler.show import show
    from quantroute.state.matrix_source import load_matrix

    show(load_matrix(args.file), args.file, _stdout())
    return 0


def plot_main(args: argparse.Namespace) -> int:
    require("profiler", "matrix plot", "matplotlib")
    from quantroute.profiler.plot import plot_matrix
    from quantroute.state.matrix_source import load_matrix

    path = plot_matrix(load_matrix(args.file), args.output, title=Path(args.file).name)
    print(f"wrote {path}", file=sys.stdout)
    return 0
