"""Percentiles of measured latencies, with the rule for when a p99 can be quoted."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from quantroute.core.matrix import Percentiles
from quantroute.profiler.settings import P99_MIN_SAMPLES


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 < q < 1) by linear interpolation between order statistics."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[round(q * 1000) - 1]


def percentiles(values_ms: Sequence[float], min_p99: int = P99_MIN_SAMPLES) -> Percentiles:
    """p50/p95/p99 of ``values_ms``; ``p99_reliable`` only from ``min_p99`` values on."""
    if not values_ms:
        return Percentiles()
    return Percentiles(
        p50=quantile(values_ms, 0.50),
        p95=quantile(values_ms, 0.95),
        p99=quantile(values_ms, 0.99),
        n=len(values_ms),
        p99_reliable=len(values_ms) >= min_p99,
    )
