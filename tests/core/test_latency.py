"""Measured latency: the estimator (smoothing, load-normalised TTFT factors) and its blend with
the matrix prior in the latency scorer. Injected values only; figures worked out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from quantroute.config import PolicyConfig
from quantroute.core import scorers
from quantroute.core.filters import FilterContext
from quantroute.core.latency import (
    MAX_FACTOR,
    NOTHING,
    PRIOR,
    LatencySample,
    ObservedLatency,
    aged,
    blend,
    fit,
    observe,
    peer_fit,
    pool,
)
from quantroute.core.matrix import CapabilityMatrix, Percentiles
from quantroute.core.model import BackendState
from quantroute.core.scheduler import decide

from .helpers import backend, features, matrix, policy, snapshot

DECAY = 0.1


def feed(samples: list[LatencySample], decay: float = DECAY) -> ObservedLatency:
    o = NOTHING
    for s in samples:
        o = observe(o, s, decay)
    return o


def ratio_samples(
    ratio: float, count: int, queue_s: float = 0.1, prefill_s: float = 0.1
) -> list[LatencySample]:
    """``count`` samples whose TTFT is ``ratio`` times what the prior expected at dispatch."""
    return [
        LatencySample(ttft_s=ratio * (queue_s + prefill_s), prior_queue_s=queue_s,
                      prior_prefill_s=prefill_s)
        for _ in range(count)
    ]  # fmt: skip


def test_moving_averages_and_decayed_counts() -> None:
    o = feed([LatencySample(ttft_s=1.0, per_token_s=0.02, load=2.0)])
    assert (o.ttft_s, o.per_token_s, o.load, o.per_token_n) == (1.0, 0.02, 2.0, 1.0)
    o = observe(o, LatencySample(ttft_s=2.0, per_token_s=0.04, load=4.0), DECAY)
    assert o.ttft_s == pytest.approx(1.1)
    assert o.per_token_s == pytest.approx(0.022)
    assert o.load == pytest.approx(2.2)
    assert o.per_token_n == pytest.approx(1.9)
    assert (o.ttft_samples, o.per_token_samples) == (2, 2)
    assert o.n == 0.0  # no prior split came with these samples: nothing to fit


def test_a_sample_without_ttft_leaves_the_ttft_average_alone() -> None:
    o = feed([LatencySample(ttft_s=1.0), LatencySample(per_token_s=0.05)])
    assert (o.ttft_s, o.ttft_samples, o.per_token_samples) == (1.0, 1, 1)


def test_decayed_count_saturates_at_one_over_decay() -> None:
    o = feed(ratio_samples(1.0, 200))
    assert o.n == pytest.approx(1 / DECAY, rel=1e-6)


def test_nothing_observed_is_the_prior_exactly() -> None:
    assert fit(None, 5.0) == fit(NOTHING, 5.0)
    f = fit(NOTHING, 5.0)
    assert (f.queue_factor, f.prefill_factor, f.weight) == (1.0, 1.0, 0.0)


@pytest.mark.parametrize("count", [1, 3, 10, 50])
def test_half_and_half_samples_blend_by_n_over_n_plus_k(count: int) -> None:
    """A replica twice as slow as its prior, in samples half queueing and half prefill: the
    factor is exactly w * 2 + (1 - w) * 1 with w = n / (n + k)."""
    k = 5.0
    o = feed(ratio_samples(2.0, count))
    n = sum((1 - DECAY) ** i for i in range(count))
    f = fit(o, k)
    w = n / (n + k)
    assert f.weight == pytest.approx(w)
    assert f.queue_factor == pytest.approx(1 + w)
    assert f.prefill_factor == pytest.approx(1 + w)


def test_a_stronger_prior_moves_less() -> None:
    o = feed(ratio_samples(2.0, 10))
    assert fit(o, 50.0).queue_factor < fit(o, 5.0).queue_factor < 2.0


def test_queueing_and_prefill_separate_when_the_mix_varies() -> None:
    """Prefill runs at the prior's rate, queueing takes three times the prior: samples with
    different shares of each tell the two apart."""
    samples = []
    for i in range(60):
        q, p = (0.3, 0.01) if i % 2 else (0.01, 0.3)
        samples.append(LatencySample(ttft_s=3.0 * q + 1.0 * p, prior_queue_s=q, prior_prefill_s=p))
    f = fit(feed(samples), 1.0)
    assert f.queue_factor == pytest.approx(3.0, abs=0.25)
    assert f.prefill_factor == pytest.approx(1.0, abs=0.25)


def test_without_new_samples_the_weight_halves_every_half_life() -> None:
    o = observe(NOTHING, ratio_samples(3.0, 1)[0], DECAY, at=100.0)
    for _ in range(9):
        o = observe(o, ratio_samples(3.0, 1)[0], DECAY, at=100.0)
    assert o.at == 100.0
    assert aged(o, 0.0, 60.0) is o
    later = aged(o, 60.0, 60.0)
    assert later.n == pytest.approx(o.n / 2)
    assert fit(later, 5.0).weight == pytest.approx((o.n / 2) / (o.n / 2 + 5.0))
    much_later = fit(aged(o, 6000.0, 60.0), 5.0)
    assert much_later.queue_factor == pytest.approx(1.0, abs=1e-6)  # back to the prior
    assert (later.ttft_s, later.ttft_samples) == (o.ttft_s, o.ttft_samples)  # raw: as measured


def test_factors_are_bounded() -> None:
    f = fit(feed(ratio_samples(1000.0, 100)), 1.0)
    assert f.queue_factor == f.prefill_factor == MAX_FACTOR


def test_load_at_dispatch_is_not_counted_twice() -> None:
    """A backend observed only under load, with TTFTs exactly what the prior expected at that
    load, learns factor 1: at no load it is expected at its idle prior, not at the busy TTFT."""
    busy_prior_queue = 0.1 * (1 + 20 / 10)  # matrix 100 ms, 20 running of capacity 10
    o = feed(ratio_samples(1.0, 30, queue_s=busy_prior_queue, prefill_s=0.02))
    assert o.ttft_s == pytest.approx(0.32)  # the raw average is the busy TTFT ...
    m = matrix(a={"ttft": 100.0})
    idle = dataclasses.replace(backend("a", capacity=10), observed=o)
    assert scorers.expected_ttft_ms(idle, ctx(m)) == pytest.approx(120.0)  # ... not the estimate


@pytest.mark.parametrize(
    ("prior", "measured", "n", "expected"),
    [
        (10.0, None, 3.0, 10.0),
        (10.0, 20.0, 0.0, 10.0),
        (None, 20.0, 3.0, 20.0),
        (None, None, 0.0, None),
        (10.0, 20.0, 5.0, 15.0),
        (10.0, 20.0, 15.0, 17.5),
    ],
)
def test_blend(
    prior: float | None, measured: float | None, n: float, expected: float | None
) -> None:
    assert blend(prior, measured, n, 5.0) == (
        expected if expected is None else pytest.approx(expected)
    )


POLICY = PolicyConfig(default_max_tokens=100)


def twin(backend_id: str, observed: ObservedLatency | None = None) -> BackendState:
    """A backend of variant ``a`` (what the matrix profiles), with what was measured there."""
    b = backend(backend_id, capacity=10)
    config = b.config.model_copy(update={"variant": "a"})
    return dataclasses.replace(b, config=config, observed=observed)


def with_itl(m: CapabilityMatrix, variant: str, itl_ms: float) -> CapabilityMatrix:
    profile = m.variants[variant].model_copy(update={"itl_ms": Percentiles(p50=itl_ms)})
    return m.model_copy(update={"variants": {**m.variants, variant: profile}})


def ctx(m: CapabilityMatrix | None, policy: PolicyConfig = POLICY) -> FilterContext:
    return FilterContext(features(prompt=100, max_tokens=100), policy, m, 0.0)


def test_latency_scorer_scales_the_prior_by_the_fitted_factors() -> None:
    m = matrix(a={"ttft": 100.0})
    o = feed(ratio_samples(3.0, 10))
    w = o.n / (o.n + 5.0)
    state = dataclasses.replace(backend("a", capacity=10), observed=o)
    est = scorers.latency_estimate(state, ctx(m))
    assert (est.prior_queue_ms, est.prior_prefill_ms) == pytest.approx((100.0, 20.0))
    assert est.ttft_ms == pytest.approx(120.0 * (1 + 2 * w))
    assert scorers.latency([state], ctx(m)) == pytest.approx([500 / (500 + est.ttft_ms)])
    off = POLICY.model_copy(update={"measured_latency": False})
    assert scorers.expected_ttft_ms(state, ctx(m, off)) == pytest.approx(120.0)


def test_time_per_token_counts_when_asked_for() -> None:
    m = with_itl(matrix(a={"ttft": 100.0}), "a", 20.0)
    o = feed([LatencySample(per_token_s=0.06)] * 5)
    state = dataclasses.replace(backend("a", capacity=10), observed=o)
    est = scorers.latency_estimate(state, ctx(m))
    n = o.per_token_n
    blended = (n * 60.0 + 5.0 * 20.0) / (n + 5.0)
    assert est.per_token_ms == pytest.approx(blended)
    assert est.per_token_weight == pytest.approx(n / (n + 5.0))
    assert scorers.latency([state], ctx(m)) == pytest.approx([500 / 620])  # TTFT alone
    decode = POLICY.model_copy(update={"latency_decode_tokens": 10})
    expected = 120.0 + 10 * blended
    assert scorers.latency([state], ctx(m, decode)) == pytest.approx([500 / (500 + expected)])


def test_a_measured_slow_twin_loses_the_decision_which_carries_the_figures() -> None:
    """Same variant, same prior: a tie on the prior; the twin measured slower ranks second."""
    m = matrix(a={"ttft": 100.0})
    fast = twin("fast", feed(ratio_samples(1.0, 10)))
    slow = twin("slow", feed(ratio_samples(3.0, 10)))
    pol = policy(("a",), tie_tolerance=0.0, default_max_tokens=100)
    assert decide(features(), snapshot(twin("fast"), twin("slow")), m, pol).latency[
        "slow"
    ].ttft_ms == pytest.approx(120.0)  # unobserved: the twins' prior, to the millisecond
    decision = decide(features(), snapshot(slow, fast), m, pol)
    assert decision.ranked == ("fast", "slow")
    assert decision.latency["slow"].fit.queue_factor > 1.5
    assert decision.latency["fast"].fit.queue_factor == pytest.approx(1.0)


def test_pooling_adds_the_fit_statistics_and_weighs_time_per_token() -> None:
    a = feed(ratio_samples(0.5, 10) + [LatencySample(per_token_s=0.02)] * 3)
    b = feed([*ratio_samples(0.5, 4), LatencySample(per_token_s=0.04)])
    pooled = pool([a, b])
    assert pooled is not None
    assert (pooled.n, pooled.sqy) == pytest.approx((a.n + b.n, a.sqy + b.sqy))
    expected_tok = (a.per_token_n * 0.02 + b.per_token_n * 0.04) / (a.per_token_n + b.per_token_n)
    assert pooled.per_token_s == pytest.approx(expected_tok)
    assert fit(pooled, 5.0).queue_factor == pytest.approx(
        fit(feed(ratio_samples(0.5, 14)), 5.0).queue_factor, rel=0.05
    )
    assert pool([]) is None and pool([NOTHING]) is None


def test_an_unmeasured_replica_starts_from_its_measured_peers_not_the_bare_prior() -> None:
    peers = pool([feed(ratio_samples(0.5, 40))])
    start = peer_fit(peers, 5.0)
    assert peers is not None
    w_peers = peers.n / (peers.n + 5.0)
    assert start.queue_factor == pytest.approx(w_peers * 0.5 + (1 - w_peers) * 1.0)
    assert start.n == pytest.approx(peers.n)
    alone = fit(None, 5.0, start)
    assert (alone.queue_factor, alone.prefill_factor) == (start.queue_factor, start.prefill_factor)
    assert (alone.weight, alone.n) == (0.0, 0.0)
    assert fit(None, 5.0, peer_fit(None, 5.0)) == PRIOR  # no peer measured: the matrix prior
    # its own samples then pull away from the peers' factors, by n / (n + k) as before
    own = feed(ratio_samples(2.0, 200))
    w = own.n / (own.n + 5.0)
    seeded = fit(own, 5.0, start)
    assert seeded.queue_factor == pytest.approx(w * 2.0 + (1 - w) * start.queue_factor)
    assert seeded.peer_n == pytest.approx(peers.n)


def test_a_revived_replica_of_a_measured_fast_variant_is_not_starved_at_low_load() -> None:
    """The kill-test case: the twin measured faster than the prior wins every request over a
    replica with no samples, unless the latter starts from its peers' factors."""
    m = matrix(a={"ttft": 100.0})
    fast = twin("fast", feed(ratio_samples(0.5, 40)))
    fresh = twin("fresh")
    pol = policy(("a",), tie_tolerance=0.0, default_max_tokens=100)
    decision = decide(features(), snapshot(fast, fresh), m, pol)
    assert decision.ranked[0] == "fast"  # on the bare prior the new replica always loses
    seeded = dataclasses.replace(fresh, peers=pool([fast.observed] if fast.observed else []))
    decision = decide(features(), snapshot(fast, seeded), m, pol)
    est = decision.latency["fresh"]
    assert est.ttft_ms == pytest.approx(decision.latency["fast"].ttft_ms, rel=0.15)
    assert est.fit.peer_n > 0 and est.as_dict()["peer_samples"] == round(est.fit.peer_n, 3)
    assert decision.scores["fresh"].total == pytest.approx(decision.scores["fast"].total, rel=0.02)
