"""decide(): table-driven, no server, no clock."""

from __future__ import annotations

from collections import Counter

import pytest

from quantroute.core.model import BackendState, Health, LatencyClass, Outcome
from quantroute.core.scheduler import decide

from .helpers import backend, features, matrix, policy, snapshot

AB = ("a", "b")


def test_unknown_model() -> None:
    d = decide(features(model="nope"), snapshot(backend("a")), None, policy(("a",)))
    assert d.outcome is Outcome.UNKNOWN_MODEL and d.chosen is None


def test_a_group_without_any_backend_now_is_no_backend_not_an_unknown_model() -> None:
    """Every replica of its variants scaled away or not Ready: a retryable 503, not a 404."""
    d = decide(features(model="auto"), snapshot(backend("b")), None, policy(("a",), floor=0.5))
    assert d.outcome is Outcome.NO_BACKEND and d.chosen is None
    assert (d.group, d.quality_floor, d.rejected) == ("auto", 0.5, {})


def test_model_by_served_name_bypasses_groups() -> None:
    d = decide(features(model="served-b"), snapshot(backend("a"), backend("b")), None, policy(AB))
    assert d.chosen == "b" and d.ranked == ("b",)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (backend("a", health=Health.STALE), "health"),
        (backend("a", health=Health.DOWN), "health"),
        (backend("a", health=Health.UNKNOWN), "health"),
        (backend("a", max_seq_len=150), "context"),
        (backend("a", kv=0.97), "kv_ceiling"),
        (backend("a", kv=None), "kv_ceiling"),
        (backend("a", kv=0.84, blocks=100), "kv_pressure"),
    ],
)
def test_each_filter_rejects_with_its_reason(state: BackendState, reason: str) -> None:
    d = decide(features(), snapshot(state, backend("b")), None, policy(AB))
    assert d.chosen == "b"
    assert d.rejected["a"][0].filter == reason, d.rejected


def test_kv_pressure_is_recorded_as_steering_event() -> None:
    d = decide(features(), snapshot(backend("a", kv=0.9), backend("b")), None, policy(AB))
    assert d.kv_pressure == ("a",)
    full = snapshot(backend("a", kv=1.0), backend("b"), backend("c", kv=None))
    d = decide(features(), full, None, policy(("a", "b", "c")))
    assert d.kv_pressure == ("a",)  # a full cache counts; an unknown one is not pressure


def test_kv_pressure_prediction_counts_prompt_and_pending() -> None:
    # 1000 blocks * 16 = 16000 tokens; 0.5 usage + (4000 pending + 4100 request) / 16000 = 1.006
    busy = backend("a", kv=0.5, pending=3, pending_kv=4000)
    d = decide(
        features(prompt=4000, max_tokens=100), snapshot(busy, backend("b")), None, policy(AB)
    )
    assert "a" in d.kv_pressure and d.chosen == "b"


def test_kv_pressure_is_soft_but_ceiling_is_hard() -> None:
    snap = snapshot(backend("a", kv=0.88), backend("b", kv=0.9))
    d = decide(features(), snap, None, policy(AB))
    assert d.outcome is Outcome.ROUTED and d.relaxed == ("kv_pressure",) and d.kv_pressure == ()
    d = decide(features(), snapshot(backend("a", kv=0.96), backend("b", kv=0.99)), None, policy(AB))
    assert d.outcome is Outcome.NO_BACKEND and set(d.rejected) == {"a", "b"}


def test_too_long_for_every_backend() -> None:
    snap = snapshot(backend("a", max_seq_len=1000), backend("b", max_seq_len=2000))
    d = decide(features(prompt=1900, max_tokens=200), snap, None, policy(AB))
    assert d.outcome is Outcome.TOO_LONG


def test_long_prompt_goes_to_long_context_backend() -> None:
    snap = snapshot(backend("a", max_seq_len=8192), backend("b", max_seq_len=32768))
    d = decide(features(prompt=20000, max_tokens=500), snap, None, policy(AB))
    assert d.chosen == "b" and d.rejected["a"][0].filter == "context"


def test_quality_floor_and_instability_from_matrix() -> None:
    m = matrix(
        a={"quality": {"coding": 0.5, "chat": 0.9}},
        b={"quality": {"coding": 0.9, "chat": 0.9}, "stable": True},
        c={"quality": {"coding": 0.95}, "stable": False},
    )
    snap = snapshot(backend("a"), backend("b"), backend("c"))
    d = decide(features(task="coding"), snap, m, policy(("a", "b", "c"), floor=0.7))
    assert d.chosen == "b"
    assert d.rejected["a"][0].filter == "quality" and "unstable" in d.rejected["c"][0].detail
    d = decide(features(task="chat"), snap, m, policy(("a", "b"), floor=0.7))
    assert set(d.scores) == {"a", "b"}


def test_without_matrix_quality_filter_passes() -> None:
    d = decide(features(task="coding"), snapshot(backend("a")), None, policy(("a",), floor=0.99))
    assert d.chosen == "a"


def test_deterministic_for_a_seed() -> None:
    snap = snapshot(backend("a"), backend("b"), backend("c"))
    first = [
        decide(features(sequence=i), snap, None, policy(("a", "b", "c"))).chosen for i in range(20)
    ]
    again = [
        decide(features(sequence=i), snap, None, policy(("a", "b", "c"))).chosen for i in range(20)
    ]
    assert first == again


def test_near_ties_are_spread_not_herded() -> None:
    snap = snapshot(backend("a"), backend("b"), backend("c"))
    chosen = Counter(
        decide(features(sequence=i), snap, None, policy(("a", "b", "c"))).chosen for i in range(300)
    )
    assert set(chosen) == {"a", "b", "c"} and min(chosen.values()) > 50


def test_clear_winner_always_wins() -> None:
    snap = snapshot(backend("a", kv=0.7, running=200), backend("b", kv=0.05))
    assert {decide(features(sequence=i), snap, None, policy(AB)).chosen for i in range(50)} == {"b"}


def test_batch_prefers_cheap_interactive_prefers_fast() -> None:
    m = matrix(fast={"ttft": 50.0, "cost": 2.0}, cheap={"ttft": 900.0, "cost": 0.2})
    snap = snapshot(backend("fast"), backend("cheap"))
    pol = policy(("fast", "cheap"), tie_tolerance=0.0)
    assert decide(features(latency_class=LatencyClass.INTERACTIVE), snap, m, pol).chosen == "fast"
    assert decide(features(latency_class=LatencyClass.BATCH), snap, m, pol).chosen == "cheap"


def test_round_robin_cycles_over_admitted() -> None:
    snap = snapshot(backend("a"), backend("b"), backend("c", health=Health.DOWN))
    pol = policy(("a", "b", "c"), picker="round_robin")
    assert [decide(features(sequence=i), snap, None, pol).chosen for i in range(4)] == [
        "a",
        "b",
        "a",
        "b",
    ]


def test_scores_are_in_unit_interval_and_ranked() -> None:
    snap = snapshot(
        backend("a", kv=0.3, running=100, waiting=20), backend("b"), backend("c", kv=0.6)
    )
    d = decide(features(), snap, None, policy(("a", "b", "c")))
    assert all(
        0.0 <= s.total <= 1.0 and all(0 <= p <= 1 for p in s.parts.values())
        for s in d.scores.values()
    )
    assert set(d.ranked) == {"a", "b", "c"} and d.ranked[0] == d.chosen


def test_prefill_backlog_steers_a_prompt_away_from_a_backend_busy_prefilling() -> None:
    import dataclasses

    busy = dataclasses.replace(backend("a"), prefill_backlog_tokens=60_000)  # ~12 s at 5k tok/s
    d = decide(
        features(prompt=2000), snapshot(busy, backend("b")), None, policy(AB, tie_tolerance=0.0)
    )
    assert d.chosen == "b" and d.scores["a"].parts["latency"] < d.scores["b"].parts["latency"]


def test_quality_fallback_serves_below_floor_only_when_nothing_else_fits() -> None:
    m = matrix(short={"quality": {"chat": 0.95}}, long={"quality": {"chat": 0.5}})
    snap = snapshot(backend("short", max_seq_len=8192), backend("long", max_seq_len=32768))
    big = features(prompt=20_000, max_tokens=100, task="chat")
    strict = policy(("short", "long"), floor=0.7)
    assert decide(big, snap, m, strict).outcome is Outcome.NO_BACKEND
    lenient = policy(("short", "long"), floor=0.7, quality_fallback="best_available")
    d = decide(big, snap, m, lenient)
    assert d.chosen == "long" and "quality" in d.relaxed
    assert (
        decide(features(task="chat"), snap, m, lenient).chosen == "short"
    )  # floor holds otherwise
