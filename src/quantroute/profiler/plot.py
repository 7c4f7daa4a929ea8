"""``quantroute matrix plot``: cost per 1M output tokens against quality, one panel per task type,
with the Pareto front (no other stable variant is both cheaper and better) drawn and marked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from quantroute.config import TASK_TYPES, TaskType
from quantroute.core.matrix import CapabilityMatrix


@dataclass(frozen=True, slots=True)
class Point:
    variant: str
    cost: float
    quality: float
    stable: bool


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Stable points not dominated by another stable point (cheaper-or-equal and better-or-equal,
    strictly better in one), cheapest first."""
    ordered = sorted((p for p in points if p.stable), key=lambda p: (p.cost, -p.quality))
    front: list[Point] = []
    for point in ordered:
        if not front or point.quality > front[-1].quality:
            front.append(point)
    return front


def task_points(matrix: CapabilityMatrix, task: TaskType) -> tuple[list[Point], list[str]]:
    """Plottable points, and the variants left out with why."""
    points, left_out = [], []
    for name, v in matrix.variants.items():
        tp = v.tasks.get(task)
        if tp is None:
            continue
        if tp.quality is None or v.cost_per_1m_output_tokens is None:
            left_out.append(f"{name} (no {'quality' if tp.quality is None else 'cost'})")
            continue
        points.append(Point(name, v.cost_per_1m_output_tokens, tp.quality, tp.stable))
    return points, left_out


PT_PER_QUALITY = 280.0  # about how many points one unit of quality spans in a panel
LABEL_PT = 11.0


def _label_offsets(points: Sequence[Point]) -> list[float]:
    """Vertical label offsets (points) that stack the labels of nearby markers instead of
    printing them over each other: within a cluster of similar cost, labels go top-down in order
    of quality, each at least one line below the previous."""
    span = max((p.cost for p in points), default=1.0) or 1.0
    offsets = [4.0] * len(points)
    placed: list[tuple[float, float]] = []  # (cost, label height in points)
    for i in sorted(range(len(points)), key=lambda i: -points[i].quality):
        p = points[i]
        natural = p.quality * PT_PER_QUALITY + 4.0
        below = [h for c, h in placed if abs(c - p.cost) < 0.08 * span and h - natural < LABEL_PT]
        y = min([natural, *(h - LABEL_PT for h in below)])
        placed.append((p.cost, y))
        offsets[i] = y - p.quality * PT_PER_QUALITY
    return offsets


def _style(point: Point, on_front: set[str]) -> dict[str, str]:
    if point.variant in on_front:
        return {"marker": "*", "color": "tab:red"}
    if point.stable:
        return {"marker": "o", "color": "tab:blue"}
    return {"marker": "x", "color": "grey"}


def _draw(ax: Axes, task: TaskType, points: list[Point], left_out: list[str]) -> None:
    front = pareto_front(points)
    on_front = {p.variant for p in front}
    for p, dy in zip(points, _label_offsets(points), strict=True):
        style = _style(p, on_front)
        ax.scatter([p.cost], [p.quality], s=90, zorder=3, marker=style["marker"], c=style["color"])
        ax.annotate(p.variant, (p.cost, p.quality), textcoords="offset points", xytext=(7, dy),
                    fontsize=8)  # fmt: skip
    if len(front) > 1:
        ax.step([p.cost for p in front], [p.quality for p in front], where="post",
                color="tab:red", linewidth=1.2)  # fmt: skip
    ax.set_title(task)
    ax.set_xlabel("$ per 1M output tokens (at best stable concurrency)")
    ax.set_ylabel("quality (pass rate)")
    ax.set_xlim(left=0.0, right=max((p.cost for p in points), default=1.0) * 1.25)
    ax.set_ylim(0.0, 1.05)
    ax.grid(True, alpha=0.3)
    if left_out:
        ax.text(0.01, 0.01, "not plotted: " + ", ".join(left_out), transform=ax.transAxes,
                fontsize=7, color="grey")  # fmt: skip
    if not points:
        ax.text(0.5, 0.5, "no variant with both cost and quality", ha="center",
                transform=ax.transAxes)  # fmt: skip


def plot_matrix(matrix: CapabilityMatrix, out: str | Path, title: str = "") -> Path:
    """Draw the four panels into ``out`` (PNG, or any format matplotlib knows by extension)."""
    tasks = [t for t in TASK_TYPES if any(t in v.tasks for v in matrix.variants.values())]
    tasks = tasks or list(TASK_TYPES)
    cols = 2 if len(tasks) > 1 else 1
    rows = (len(tasks) + cols - 1) // cols
    fig = Figure(figsize=(6 * cols, 4.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, task in zip(axes, tasks, strict=False):
        _draw(ax, task, *task_points(matrix, task))
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    suffix = " (PARTIAL)" if matrix.partial else ""
    fig.suptitle(
        f"{title or 'capability matrix'}: cost vs quality{suffix}\n"
        "red star: Pareto front (no stable variant cheaper and better); "
        "blue dot: stable; grey x: unstable",
        fontsize=10,
    )
    path = Path(out)
    fig.savefig(path, dpi=110)
    return path
