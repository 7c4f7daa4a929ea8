"""``quantroute matrix show``: the capability matrix as tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from quantroute.config import TASK_TYPES
from quantroute.core.matrix import CapabilityMatrix, Percentiles, TaskProfile, VariantProfile
from quantroute.profiler.settings import P99_MIN_SAMPLES

NONE = "—"


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value:,.1f}"


def p99_cell(p: Percentiles) -> str:
    """The p99, or why it is not quoted."""
    if p.n == 0:
        return NONE
    return _ms(p.p99) if p.p99_reliable else "n too small"


def _money(value: float | None, digits: int = 2) -> str:
    return NONE if value is None else f"${value:,.{digits}f}"


def _status(profile: VariantProfile) -> str:
    if profile.error:
        return "[red]failed[/]"
    unstable = [t for t, tp in profile.tasks.items() if not tp.stable]
    return f"[yellow]unstable: {', '.join(unstable)}[/]" if unstable else "[green]ok[/]"


def latency_table(matrix: CapabilityMatrix) -> Table:
    table = Table(title="Latency, ms of real time (graded requests)", title_justify="left")
    table.add_column("variant")
    for name in ("TTFT p50", "p95", "p99", "n", "ITL p50", "p95", "p99", "n", "prefill tok/s"):
        table.add_column(name, justify="right")
    for variant, v in matrix.variants.items():
        table.add_row(
            variant,
            *(_ms(x) for x in (v.ttft_ms.p50, v.ttft_ms.p95)),
            p99_cell(v.ttft_ms),
            str(v.ttft_ms.n),
            *(_ms(x) for x in (v.itl_ms.p50, v.itl_ms.p95)),
            p99_cell(v.itl_ms),
            str(v.itl_ms.n),
            NONE if v.prefill_tokens_per_s is None else f"{v.prefill_tokens_per_s:,.0f}",
        )
    return table


def cost_table(matrix: CapabilityMatrix) -> Table:
    table = Table(title="Throughput and cost at the best stable concurrency", title_justify="left")
    table.add_column("variant")
    table.add_column("GPU")
    for name in ("$/h", "best conc.", "out tok/s", "$/1M out"):
        table.add_column(name, justify="right")
    table.add_column("status")
    for variant, v in matrix.variants.items():
        best = next((p for p in v.throughput if p.concurrency == v.best_concurrency), None)
        table.add_row(
            variant,
            v.gpu or NONE,
            _money(v.gpu_cost_per_hour),
            NONE if v.best_concurrency is None else str(v.best_concurrency),
            NONE if best is None else f"{best.output_tokens_per_s:,.0f}",
            _money(v.cost_per_1m_output_tokens, 3),
            _status(v),
        )
    return table


def _quality_cell(tp: TaskProfile | None) -> str:
    if tp is None:
        return NONE
    if tp.quality is None:
        return "[red]✗ no answers[/]"
    rel = "" if tp.relative_quality is None else f" ({tp.relative_quality:.2f})"
    mark = "[green]✓[/]" if tp.stable else "[red]✗[/]"
    return f"{mark} {tp.quality:.2f}{rel} [dim]{tp.passed}/{tp.samples}[/]"


def quality_table(matrix: CapabilityMatrix) -> Table:
    tasks = [t for t in TASK_TYPES if any(t in v.tasks for v in matrix.variants.values())]
    table = Table(
        title="Quality per task: pass rate (relative to the best variant), passed/sent",
        title_justify="left",
    )
    table.add_column("variant")
    for task in tasks:
        table.add_column(task)
    for variant, v in matrix.variants.items():
        table.add_row(variant, *(_quality_cell(v.tasks.get(task)) for task in tasks))
    return table


def sweep_table(matrix: CapabilityMatrix) -> Table:
    levels = sorted({p.concurrency for v in matrix.variants.values() for p in v.throughput})
    table = Table(title="Concurrency sweep: output tokens/s (failed %)", title_justify="left")
    table.add_column("variant")
    for level in levels:
        table.add_column(f"c={level}", justify="right")
    for variant, v in matrix.variants.items():
        points = {p.concurrency: p for p in v.throughput}
        cells = []
        for level in levels:
            p = points.get(level)
            if p is None:
                cells.append(NONE)
                continue
            failed = (p.errors + p.timeouts) / p.requests if p.requests else 0.0
            star = "*" if level == v.best_concurrency else ""
            cells.append(f"{p.output_tokens_per_s:,.0f}{star} ({failed:.0%})")
        table.add_row(variant, *cells)
    return table


def header(matrix: CapabilityMatrix, source: str) -> str:
    lines = [f"[bold]{source}[/]: schema {matrix.schema_version}, generated {matrix.generated_at}"]
    if matrix.partial:
        lines.append(
            "[bold red]PARTIAL[/]: profiling was interrupted; figures cover what was measured"
        )
    info = matrix.profiler
    if info is not None:
        lines.append(
            f"time scale {info.time_scale:g}, graded requests at concurrency "
            f"{info.latency_concurrency}, quality floor {info.quality_floor}, "
            f"max error rate {info.max_error_rate}"
            + (f", TTFT SLO {info.ttft_slo_ms:g} ms" if info.ttft_slo_ms else "")
        )
    suites = ", ".join(f"{s.name}/{s.task} ({s.size})" for s in matrix.suites)
    lines.append(f"suites: {suites or NONE}")
    return "\n".join(lines)


def notes(matrix: CapabilityMatrix) -> list[str]:
    minimum = matrix.profiler.p99_min_samples if matrix.profiler else None
    out = [f"p99 is quoted from n >= {minimum or P99_MIN_SAMPLES} requests, else 'n too small'."]
    for variant, v in matrix.variants.items():
        if v.error:
            out.append(f"{variant}: {v.error}")
        for task, tp in v.tasks.items():
            if not tp.stable and tp.reason and not v.error:
                out.append(f"{variant}/{task} unstable: {tp.reason}")
    return out


def show(matrix: CapabilityMatrix, source: str, console: Console) -> None:
    console.print(header(matrix, source))
    console.print(latency_table(matrix))
    console.print(cost_table(matrix))
    console.print(quality_table(matrix))
    console.print(sweep_table(matrix))
    for line in notes(matrix):
        console.print(f"[dim]- {line}[/]", highlight=False)
