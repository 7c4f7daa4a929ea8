"""The overhead benchmark's interval for the median of the c=1 pairs (benchmarks/overhead)."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

OVERHEAD = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead"


def _median_interval() -> Callable[[list[float]], tuple[float, float]]:
    """``report.median_interval``, loaded from its file (the overhead benchmark's modules import
    each other as top-level modules: its folder is on the path only while it loads)."""
    spec = importlib.util.spec_from_file_location("overhead_report", OVERHEAD / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(OVERHEAD))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(OVERHEAD))
    return cast(Callable[[list[float]], tuple[float, float]], module.median_interval)


median_interval = _median_interval()


def test_the_interval_is_the_order_statistics_of_the_binomial_table() -> None:
    # ranks from the sign test's table: n=20 -> (6, 15), n=60 -> (22, 39), n=6 -> (1, 6)
    assert median_interval([float(i) for i in range(20, 0, -1)]) == (6.0, 15.0)
    assert median_interval([float(i) for i in range(1, 61)]) == (22.0, 39.0)
    assert median_interval([float(i) for i in range(1, 7)]) == (1.0, 6.0)


def test_too_few_values_give_no_interval() -> None:
    low, high = median_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert math.isnan(low) and math.isnan(high)


def test_the_interval_covers_a_skewed_distributions_median_as_often_as_it_claims() -> None:
    """Exponential draws (median ln 2), 20 to a sample as in a run's pairs: the interval holds
    the median in 95.86% of samples whatever the distribution (the sign test's exact level)."""
    rng = random.Random(17)
    trials = 2000
    held = 0
    for _ in range(trials):
        low, high = median_interval([rng.expovariate(1.0) for _ in range(20)])
        held += low <= math.log(2.0) <= high
    assert 0.94 <= held / trials <= 0.975
