"""The Pareto set of candidates (p99 TTFT and cost lower, quality share higher) and the choice
by objective."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from quantroute.replay.measures import Summary
from quantroute.tune.candidates import Candidate

Objective = Literal["p99_ttft", "cost", "quality"]
OBJECTIVES: tuple[Objective, ...] = ("p99_ttft", "cost", "quality")
QUALITY_TOLERANCE = 0.005
"""A candidate chosen for latency or cost may give up at most this much quality share."""
INF = float("inf")


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    summary: Summary

    @property
    def p99(self) -> float:
        return self.summary.ttft_p99_s if self.summary.ttft_p99_s is not None else INF

    @property
    def cost(self) -> float:
        return self.summary.cost_per_1m if self.summary.cost_per_1m is not None else INF

    @property
    def quality(self) -> float:
        return self.summary.quality_share if self.summary.quality_share is not None else 0.0

    def key(self) -> tuple[float, float, float]:
        return self.p99, self.cost, -self.quality

    def value(self, objective: Objective) -> float:
        return {"p99_ttft": self.p99, "cost": self.cost, "quality": -self.quality}[objective]


def dominates(a: Scored, b: Scored) -> bool:
    ka, kb = a.key(), b.key()
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb


def pareto(scored: Sequence[Scored]) -> list[Scored]:
    """The candidates no other one dominates, fastest first."""
    front = [s for s in scored if not any(dominates(o, s) for o in scored)]
    return sorted(front, key=Scored.key)


def choose(scored: Sequence[Scored], objective: Objective) -> Scored:
    """The best on ``objective`` among those that keep the default's other guarantees: no more
    refusals and (for latency and cost) its quality share within the tolerance, (for quality)
    its p99 TTFT. The default itself always qualifies."""
    default = next(s for s in scored if s.candidate.name == "default")

    def admissible(s: Scored) -> bool:
        if s.summary.refused > default.summary.refused:
            return False
        if objective == "quality":
            return s.p99 <= default.p99
        return s.quality >= default.quality - QUALITY_TOLERANCE

    pool = [s for s in scored if admissible(s)]
    return min(pool, key=lambda s: (s.value(objective), s.key()))
