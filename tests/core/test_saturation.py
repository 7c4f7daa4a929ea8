"""Saturation as the decision reports it: what flow control may queue, and the downgrade."""

from __future__ import annotations

import pytest

from quantroute.core.model import BackendState, Health, Outcome
from quantroute.core.saturation import with_dispatched
from quantroute.core.scheduler import decide

from .helpers import backend, features, matrix, policy, snapshot

AB = ("a", "b")


@pytest.mark.parametrize(
    ("a", "b", "saturated"),
    [
        (backend("a", kv=0.99), backend("b", kv=0.97), True),  # both full: room will come
        (backend("a", kv=0.99), backend("b", health=Health.DOWN), True),  # one full, one down
        (backend("a", health=Health.DOWN), backend("b", health=Health.STALE), False),
        (backend("a", kv=None), backend("b", kv=None), False),  # usage unknown: not "full"
        (backend("a", kv=0.99, max_seq_len=100), backend("b", kv=0.99, max_seq_len=100), False),
    ],
    ids=["all-full", "full-and-down", "all-down", "kv-unknown", "too-long"],
)
def test_only_saturation_alone_marks_a_refusal_saturated(
    a: BackendState, b: BackendState, saturated: bool
) -> None:
    d = decide(features(), snapshot(a, b), None, policy(AB, metrics_outage="fail_closed"))
    assert d.outcome is not Outcome.ROUTED and d.saturated is saturated


def test_a_routed_or_unknown_model_decision_is_not_saturated() -> None:
    snap = snapshot(backend("a", kv=0.99), backend("b"))
    assert decide(features(), snap, None, policy(AB)).saturated is False
    assert decide(features(model="nope"), snap, None, policy(AB)).saturated is False


def test_the_waiting_filter_saturates_a_backend_over_its_limit() -> None:
    pol = policy(
        AB, filters=["context", "kv_ceiling", {"name": "waiting", "parameters": {"limit": 4}}]
    )
    snap = snapshot(backend("a", waiting=4), backend("b", waiting=9))
    d = decide(features(), snap, None, pol)
    assert d.outcome is Outcome.NO_BACKEND and d.saturated
    assert d.rejected["a"][0].filter == "waiting"
    d = decide(features(), snapshot(backend("a", waiting=3), backend("b", waiting=9)), None, pol)
    assert d.chosen == "a"


@pytest.mark.parametrize(
    ("running", "pending", "waiting", "admitted"),
    [
        (6, 0, 0, True),  # room: 2 of 8 slots free
        (6, 2, 0, True),  # sent since the scrape: they fill the free slots, none waits yet
        (6, 5, 0, True),  # 3 will wait: under the limit of 4
        (6, 6, 0, False),  # 4 will wait
        (8, 1, 3, False),  # full slots: what was sent joins the 3 waiting
        (0, 11, 0, True),  # idle at the scrape, 11 sent since: 8 run, 3 wait
        (0, 12, 0, False),  # an idle scrape does not release a whole queue: 4 would wait
    ],
)
def test_the_waiting_filter_counts_what_was_sent_since_the_scrape(
    running: float, pending: int, waiting: float, admitted: bool
) -> None:
    pol = policy(
        ("a",), filters=["context", "kv_ceiling", {"name": "waiting", "parameters": {"limit": 4}}]
    )
    a = backend("a", running=running, waiting=waiting, pending=pending, capacity=8)
    d = decide(features(), snapshot(a), None, pol)
    assert (d.chosen == "a") is admitted, d.rejected


def test_below_the_floor_and_full_is_not_saturated_but_the_floor_variant_full_is() -> None:
    m = matrix(a={"quality": {"chat": 0.9}}, b={"quality": {"chat": 0.4}})
    pol = policy(AB, floor=0.7)
    d = decide(features(), snapshot(backend("a", kv=0.99), backend("b")), m, pol)
    assert d.outcome is Outcome.NO_BACKEND and d.saturated  # a will have room again
    assert d.rejected["b"][0].filter == "quality"


def test_downgrade_sets_the_floor_aside_and_says_so() -> None:
    m = matrix(
        a={"quality": {"chat": 0.9}}, b={"quality": {"chat": 0.4}}, c={"quality": {"chat": 0.6}}
    )
    pol = policy(("a", "b", "c"), floor=0.7)
    snap = snapshot(backend("a", kv=0.99), backend("b"), backend("c"))
    d = decide(features(), snap, m, pol, downgrade=True)
    assert d.outcome is Outcome.ROUTED and d.downgraded and "downgrade" in d.relaxed
    assert d.chosen in ("b", "c") and "a" in d.rejected
    normal = decide(features(), snapshot(backend("a"), backend("b")), m, pol)
    assert normal.chosen == "a" and not normal.downgraded


def test_with_dispatched_counts_one_more_request_on_that_backend_only() -> None:
    snap = snapshot(backend("a", pending=1, pending_kv=10), backend("b"))
    after = with_dispatched(snap, "a", 500)
    a, b = after.backends
    assert (a.pending_requests, a.pending_kv_tokens) == (2, 510)
    assert (b.pending_requests, b.pending_kv_tokens) == (0, 0) and after.taken_at == snap.taken_at
    # enough of them and the backend is full for the next decision
    full = with_dispatched(snapshot(backend("a", kv=0.5, blocks=10)), "a", 100)
    assert decide(features(), full, None, policy(("a",))).saturated
