"""Replay a trace under each candidate policy and score it (bounded in count and time)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from quantroute.base import Clock
from quantroute.config import GatewayConfig
from quantroute.core.matrix import CapabilityMatrix
from quantroute.replay.measures import Summary, summarise
from quantroute.replay.simulate import replay
from quantroute.replay.trace import TraceRow
from quantroute.tune.candidates import Candidate, apply
from quantroute.tune.pareto import Scored


def evaluate(
    rows: Sequence[TraceRow],
    config: GatewayConfig,
    matrix: CapabilityMatrix | None,
    candidate: Candidate,
    *,
    seed: int = 0,
    profiles: Mapping[str, str] | None = None,
) -> Summary:
    """``candidate``'s replay of ``rows``, judged against ``config``'s own quality floors."""
    run = replay(rows, apply(config, candidate.fragment), matrix, seed=seed, profiles=profiles)
    return summarise(run, config, matrix)


def search(
    rows: Sequence[TraceRow],
    config: GatewayConfig,
    matrix: CapabilityMatrix | None,
    pool: Sequence[Candidate],
    *,
    seed: int = 0,
    time_limit_s: float = 600.0,
    profiles: Mapping[str, str] | None = None,
    on_result: Callable[[Scored], None] | None = None,
    clock: Clock = time.monotonic,
) -> list[Scored]:
    """Every candidate of ``pool`` in order until ``time_limit_s`` has passed (the first, the
    default, always runs)."""
    deadline = clock() + time_limit_s
    scored: list[Scored] = []
    for candidate in pool:
        if scored and clock() > deadline:
            break
        summary = evaluate(rows, config, matrix, candidate, seed=seed, profiles=profiles)
        scored.append(Scored(candidate, summary))
        if on_result is not None:
            on_result(scored[-1])
    return scored
