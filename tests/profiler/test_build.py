"""The pure parts: percentiles and the p99 rule, stability, best concurrency, cost, conversion."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quantroute.core.matrix import SuiteInfo, ThroughputPoint
from quantroute.profiler.build import (
    best_point,
    build_matrix,
    cost_per_1m,
    task_profile,
    throughput_point,
)
from quantroute.profiler.plot import Point, pareto_front
from quantroute.profiler.prefill import PrefillPoint
from quantroute.profiler.runner import LevelResult, Target, TaskTally, VariantRecord
from quantroute.profiler.session import select_samples, write_matrix
from quantroute.profiler.settings import P99_MIN_SAMPLES, ProfileSettings
from quantroute.profiler.stats import percentiles
from quantroute.state.matrix_source import load_matrix
from quantroute.workloads import builtin_suites

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SETTINGS = ProfileSettings(quality_floor=0.5, max_error_rate=0.1)


def test_percentiles_and_the_p99_rule() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    p = percentiles(values)
    assert (p.n, p.p99_reliable) == (100, True)
    assert p.p50 == pytest.approx(50.5)
    assert p.p95 == pytest.approx(95.05)
    assert p.p99 == pytest.approx(99.01)
    short = percentiles(values[: P99_MIN_SAMPLES - 1])
    assert short.n == 99 and short.p99_reliable is False
    assert percentiles([7.0]).p50 == 7.0
    empty = percentiles([])
    assert (empty.p50, empty.p99, empty.n) == (None, None, 0)


@pytest.mark.parametrize(
    ("tally", "stable", "quality", "reason"),
    [
        (TaskTally(samples=10, passed=8), True, 0.8, None),
        (TaskTally(samples=10, passed=4), False, 0.4, "below the floor"),
        (TaskTally(samples=10, passed=8, errors=2, first_error="HTTP 500"), False, 1.0, "20%"),
        (TaskTally(samples=10, passed=9, timeouts=1, first_error="timed out"), True, 1.0, None),
        (TaskTally(samples=4, errors=3, timeouts=1, first_error="boom"), False, None, "boom"),
    ],
)
def test_task_stability(
    tally: TaskTally, stable: bool, quality: float | None, reason: str | None
) -> None:
    tp = task_profile(tally, SETTINGS)
    assert tp.stable is stable
    assert tp.quality == (None if quality is None else pytest.approx(quality))
    if reason is None:
        assert tp.reason is None
    else:
        assert tp.reason is not None and reason in tp.reason


def _point(c: int, tps: float, errors: int = 0, p95: float | None = 100.0) -> ThroughputPoint:
    return ThroughputPoint(
        concurrency=c, output_tokens_per_s=tps, requests=100, errors=errors, ttft_p95_ms=p95
    )


def test_best_concurrency_is_the_fastest_stable_level() -> None:
    points = [_point(1, 100), _point(8, 700), _point(32, 1500, errors=20), _point(128, 0)]
    best = best_point(points, SETTINGS)
    assert best is not None and best.concurrency == 8
    slo = SETTINGS.model_copy(update={"ttft_slo_ms": 150.0})
    fast = [_point(1, 100, p95=50), _point(8, 700, p95=400)]
    chosen = best_point(fast, slo)
    assert chosen is not None and chosen.concurrency == 1
    assert best_point([_point(1, 100, errors=50)], SETTINGS) is None


def test_cost_formula_and_unknowns() -> None:
    # $4.50/h at 1250 tokens/s: 4.5 / (1250 * 3600) * 1e6 = $1.00 per million
    assert cost_per_1m(4.5, 1250.0) == pytest.approx(1.0)
    assert cost_per_1m(0.0, 1250.0) is None  # no price configured: unknown, not free
    assert cost_per_1m(4.5, 0.0) is None


def test_time_scale_converts_wall_measurements_to_real_units() -> None:
    settings = ProfileSettings(time_scale=0.5)  # backend runs at half speed
    level = LevelResult(
        concurrency=4,
        requests=4,
        errors=0,
        timeouts=0,
        output_tokens=400,
        wall_s=2.0,
        ttfts_s=(0.1, 0.1),
    )
    point = throughput_point(level, settings)
    assert point.output_tokens_per_s == pytest.approx(400)  # 200/s wall, twice that real
    assert point.ttft_p50_ms == pytest.approx(50.0)  # 100 ms wall is 50 ms real
    assert point.duration_s == pytest.approx(1.0)


def _record(name: str, price: float = 2.0) -> VariantRecord:
    return VariantRecord(Target(name, f"http://{name}", name, "gpu", price))


def test_matrix_from_records_failed_variant_has_no_figures(tmp_path: Path) -> None:
    good = _record("good")
    good.tasks = {"chat": TaskTally(samples=4, passed=2), "coding": TaskTally(4, 4)}
    good.ttfts_s, good.itls_s, good.successes = [0.01, 0.02], [0.001], 8
    good.levels = [LevelResult(1, 4, 0, 0, 3600, 1.0, (0.01,))]
    good.prefill = [PrefillPoint(1000, 0.15, 3), PrefillPoint(3000, 0.35, 3)]  # 10k tokens/s
    dead = _record("dead")
    dead.tasks = {"chat": TaskTally(samples=8, errors=8, first_error="connection failed")}
    dead.error = "the first 8 requests all failed: connection failed"
    suites = (SuiteInfo(name="s", task="chat", size=4), SuiteInfo(name="s", task="coding", size=4))
    matrix = build_matrix({"good": good, "dead": dead}, suites, SETTINGS, generated_at=NOW)
    g, d = matrix.variants["good"], matrix.variants["dead"]
    assert g.tasks["chat"].quality == pytest.approx(0.5)
    assert g.tasks["chat"].relative_quality == pytest.approx(1.0)  # the only answering variant
    assert g.best_concurrency == 1 and g.cost_per_1m_output_tokens == pytest.approx(
        2 / 3600 / 3600 * 1e6
    )
    assert g.prefill_tokens_per_s == pytest.approx(10_000)
    assert matrix.profiler is not None and matrix.profiler.prefill_repeats == 3
    assert d.error and d.cost_per_1m_output_tokens is None and d.best_concurrency is None
    assert d.prefill_tokens_per_s is None
    assert d.ttft_ms.p50 is None and d.itl_ms.p50 is None and d.throughput == ()
    assert set(d.tasks) == {"chat", "coding"}
    assert all(not tp.stable and tp.quality is None for tp in d.tasks.values())
    assert matrix.stable("dead", "coding") is False and matrix.quality("dead", "chat") is None
    path = write_matrix(matrix, tmp_path / "m.json")
    assert load_matrix(path) == matrix
    assert json.loads(path.read_text())["variants"]["dead"]["cost_per_1m_output_tokens"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_select_samples_interleaves_tasks_and_counts_what_was_used() -> None:
    settings = ProfileSettings(tasks=("coding", "chat"), samples_per_task=3)
    samples, infos = select_samples(builtin_suites(), settings)
    assert [s.task for s in samples] == ["coding", "chat"] * 3
    assert [(i.name, i.task, i.size) for i in infos] == [
        ("builtin-chat", "chat", 3),
        ("builtin-coding", "coding", 3),
    ]


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([("a", 1, 0.5, True), ("b", 2, 0.9, True), ("c", 3, 0.8, True)], ["a", "b"]),
        ([("a", 1, 0.9, True), ("b", 2, 0.95, True), ("c", 0.5, 0.2, True)], ["c", "a", "b"]),
        ([("a", 1, 0.9, True), ("b", 1, 0.8, True)], ["a"]),
        ([("a", 1, 0.9, True), ("u", 0.5, 1.0, False)], ["a"]),  # unstable never on the front
        ([], []),
    ],
)
def test_pareto_front(points: list[tuple[str, float, float, bool]], front: list[str]) -> None:
    pts = [Point(*p) for p in points]
    assert [p.variant for p in pareto_front(pts)] == front
