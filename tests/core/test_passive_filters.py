"""Passive health in the pure core: ejection (hard), backpressure and slow start (soft), and the
metrics-outage plan. Tables over decide(); no server, no clock."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from quantroute.core import filters
from quantroute.core.filters import FilterContext
from quantroute.core.model import SERVING, BackendState, Health, Outcome, PassiveState
from quantroute.core.scheduler import decide

from .helpers import backend, features, policy, snapshot

AB = ("a", "b")


def with_passive(state: BackendState, **passive: Any) -> BackendState:
    return dataclasses.replace(state, passive=PassiveState(**passive))


def test_ejected_backend_is_rejected_with_its_reason() -> None:
    a = with_passive(backend("a", cost=0.1), ejected="consecutive_failures: 5 in a row")
    d = decide(features(), snapshot(a, backend("b")), None, policy(AB))
    assert d.chosen == "b"
    (rejection,) = d.rejected["a"]
    assert rejection.filter == "ejection" and rejection.detail.startswith("consecutive_failures")


def test_every_backend_ejected_is_no_backend_not_a_relaxation() -> None:
    snap = snapshot(*(with_passive(backend(n), ejected="latency_outlier: slow") for n in AB))
    d = decide(features(), snap, None, policy(AB))
    assert d.outcome is Outcome.NO_BACKEND and d.relaxed == ()


@pytest.mark.parametrize("flag", [{"backpressure": True}, {"weight": 0.0001}])
def test_soft_passive_filters_steer_away_but_relax_when_alone(flag: dict[str, object]) -> None:
    a = with_passive(backend("a", cost=0.1), **flag)  # cheaper: chosen if admitted
    d = decide(features(), snapshot(a, backend("b")), None, policy(AB))
    assert d.chosen == "b" and "a" in d.rejected
    d = decide(features(), snapshot(a), None, policy(("a",)))
    assert (
        d.chosen == "a"
        and d.relaxed == (d.relaxed[0],)
        and d.relaxed[0]
        in (
            "backpressure",
            "slow_start",
        )
    )


@pytest.mark.parametrize("weight", [0.1, 0.5, 0.9])
def test_slow_start_admits_about_its_weight_of_requests(weight: float) -> None:
    a = with_passive(backend("a", cost=0.1), weight=weight)
    p = policy(AB)
    picks = Counter(
        decide(features(sequence=i), snapshot(a, backend("b")), None, p).chosen for i in range(2000)
    )
    assert abs(picks["a"] / 2000 - weight) < 0.05, picks


def test_slow_start_draw_is_deterministic_per_seed_and_request() -> None:
    a = with_passive(backend("a", cost=0.1), weight=0.5)
    p = policy(AB)
    first = [
        decide(features(sequence=i), snapshot(a, backend("b")), None, p).chosen for i in range(50)
    ]
    again = [
        decide(features(sequence=i), snapshot(a, backend("b")), None, p).chosen for i in range(50)
    ]
    other = policy(AB, seed=7)
    seeded = [
        decide(features(sequence=i), snapshot(a, backend("b")), None, other).chosen
        for i in range(50)
    ]
    assert first == again and first != seeded


def test_metrics_outage_fails_open_with_an_even_spread() -> None:
    # Both stale, one with unknown KV usage: in normal routing nothing would be admitted.
    a = backend("a", kv=None, health=Health.STALE, pending=3)
    b = backend("b", kv=0.99, health=Health.DOWN, pending=1)
    d = decide(features(), snapshot(a, b), None, policy(AB))
    assert d.outcome is Outcome.ROUTED and d.chosen == "b"  # fewer in flight
    assert set(d.relaxed) >= {"health", "kv_ceiling", "kv_pressure"}
    assert set(d.scores["b"].parts) == {"least_loaded"}


def test_metrics_outage_keeps_passive_health_and_context() -> None:
    a = with_passive(backend("a", health=Health.STALE), ejected="consecutive_failures: x")
    b = backend("b", health=Health.STALE, max_seq_len=100)
    d = decide(features(prompt=500), snapshot(a, b), None, policy(AB))
    assert d.outcome is not Outcome.ROUTED
    assert {r.filter for r in d.rejected["a"]} == {"ejection"}
    assert {r.filter for r in d.rejected["b"]} == {"context"}


def test_metrics_outage_fail_closed_rejects() -> None:
    snap = snapshot(backend("a", health=Health.STALE), backend("b", health=Health.DOWN))
    d = decide(features(), snap, None, policy(AB, metrics_outage="fail_closed"))
    assert d.outcome is Outcome.NO_BACKEND
    assert all(r[0].filter == "health" for r in d.rejected.values())


def test_one_fresh_backend_anywhere_is_no_outage() -> None:
    snap = snapshot(backend("a", health=Health.STALE), backend("b"))
    d = decide(features(), snap, None, policy(AB))
    assert d.chosen == "b" and d.rejected["a"][0].filter == "health" and d.relaxed == ()
    # A group whose backends are all down while another group's are fresh: those backends are
    # down, the metrics are not broken; no fail-open for it.
    d = decide(features(), snap, None, policy(("a",)))
    assert d.outcome is Outcome.NO_BACKEND


def test_the_filters_decide_skips_for_a_serving_backend_admit_every_serving_backend() -> None:
    """``decide`` leaves the passive filters out for a backend whose passive state is
    ``SERVING``: sound only while each of them admits such a backend whatever else it shows.
    Hard and soft passive filters both, on backends that other filters reject."""
    assert {f.__name__ for f in filters.PASSIVE_FILTERS} == {
        "ejection",
        "backpressure",
        "recent_failure",
        "slow_start",
    }
    p = policy(AB)
    for state in (backend("a"), backend("b", health=Health.DOWN, kv=0.99, max_seq_len=16)):
        assert state.passive is SERVING
        for i in range(50):
            ctx = FilterContext(features(sequence=i), p.config, None, 0.0)
            assert all(f(state, ctx) is None for f in filters.PASSIVE_FILTERS)


def test_a_fresh_default_state_decides_as_serving_and_an_ejected_one_is_still_rejected() -> None:
    """The skip is by identity: a state built afresh with the defaults (not the shared
    ``SERVING``) takes the full chain and decides as ``SERVING`` does; an ejected backend is
    never let through."""
    fresh = with_passive(backend("a", cost=0.1))
    assert fresh.passive is not SERVING and fresh.passive == SERVING
    d = decide(features(), snapshot(fresh, backend("b")), None, policy(AB))
    assert d.chosen == "a" and d.rejected == {}
    ejected = with_passive(backend("a", cost=0.1), ejected="consecutive_failures: 5 in a row")
    d = decide(features(), snapshot(ejected, backend("b")), None, policy(AB))
    assert d.chosen == "b" and [r.filter for r in d.rejected["a"]] == ["ejection"]
