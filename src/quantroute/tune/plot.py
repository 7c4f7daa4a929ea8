"""The candidates' p99 TTFT against cost, coloured by quality share, the Pareto set and the
chosen policy marked (matplotlib, from the ``profiler`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from quantroute.tune.pareto import Scored


def plot_candidates(
    scored: Sequence[Scored], front: Sequence[Scored], chosen: Scored, out: Path
) -> Path:
    fig = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = [s for s in scored if s.p99 != float("inf") and s.cost != float("inf")]
    points = ax.scatter(
        [s.cost for s in shown], [s.p99 for s in shown], c=[s.quality for s in shown],
        cmap="viridis", s=30,
    )  # fmt: skip
    fig.colorbar(points, ax=ax, label="quality share (meets the floor)")
    on_front = [s for s in front if s in shown]
    ax.scatter([s.cost for s in on_front], [s.p99 for s in on_front], marker="o", s=120,
               facecolors="none", edgecolors="red", label="Pareto set")  # fmt: skip
    for s in shown:
        if s.candidate.name in ("default", chosen.candidate.name):
            ax.annotate(s.candidate.name, (s.cost, s.p99), textcoords="offset points",
                        xytext=(6, 6), fontsize=9)  # fmt: skip
    ax.scatter([chosen.cost], [chosen.p99], marker="*", s=200, color="red", label="chosen")
    ax.set_xlabel("cost per 1M output tokens ($)")
    ax.set_ylabel("p99 TTFT, interactive (s)")
    ax.legend()
    fig.savefig(out, dpi=110)
    return out
