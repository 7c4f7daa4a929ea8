"""Each scorer and picker on its own: values computed by hand from the formulas in scorers.py."""

from __future__ import annotations

import dataclasses

import pytest

from quantroute.config import PolicyConfig
from quantroute.core import pickers, scorers
from quantroute.core.filters import FilterContext
from quantroute.core.matrix import CapabilityMatrix
from quantroute.core.model import BackendState

from .helpers import VariantSpec, backend, features, matrix

POLICY = PolicyConfig(default_max_tokens=100)


def ctx(
    m: CapabilityMatrix | None = None, prompt: int = 100, max_tokens: int = 100
) -> FilterContext:
    return FilterContext(features(prompt=prompt, max_tokens=max_tokens), POLICY, m, 0.0)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        # 1000 blocks x 16 = 16000 tokens; request 200 tokens = 0.0125 of the cache
        (backend("a", kv=0.0, capacity=10), 0.5 * (1 - 0.0125) + 0.5 * 1.0),
        (backend("a", kv=0.5, running=5, capacity=10), 0.5 * (1 - 0.5125) + 0.5 * 0.5),
        (backend("a", kv=0.5, running=2, waiting=2, capacity=10), 0.5 * 0.4875 + 0.5 * 0.4),
        (backend("a", kv=0.1, pending=4, pending_kv=1600, capacity=8), 0.5 * 0.7875 + 0.5 * 0.5),
        (backend("a", kv=None, capacity=10), 0.5 * 0.0 + 0.5 * 1.0),  # unknown KV: no credit
        (backend("a", kv=0.99, running=30, capacity=10), 0.0),  # clamped, never negative
    ],
)
def test_headroom(state: BackendState, expected: float) -> None:
    assert scorers.headroom([state], ctx()) == pytest.approx([expected])


def test_latency_from_the_matrix_load_and_prefill() -> None:
    m = matrix(a={"ttft": 100.0})
    idle = backend("a", capacity=10)
    # queued = 100 x (1 + 0/10) + 0 = 100 ms; prefill 100 tokens at the default 5000 tok/s = 20 ms
    assert scorers.expected_ttft_ms(idle, ctx(m)) == pytest.approx(120.0)
    assert scorers.latency([idle], ctx(m)) == pytest.approx([500 / (500 + 120)])
    busy = backend("a", running=5, waiting=2, capacity=10)
    # 100 x (1 + 5/10) + 2 x 100 = 350 ms, + 20 ms prefill
    assert scorers.expected_ttft_ms(busy, ctx(m)) == pytest.approx(370.0)
    # without a matrix: default_ttft_ms 200
    assert scorers.expected_ttft_ms(idle, ctx(None)) == pytest.approx(220.0)


def test_latency_counts_the_prefill_backlog_ahead() -> None:
    state = dataclasses.replace(backend("a", capacity=10), prefill_backlog_tokens=30_000)
    # 200 ms + (30000 + 100) tokens at 5000 tok/s = 6020 ms
    assert scorers.expected_ttft_ms(state, ctx(None)) == pytest.approx(200.0 + 6020.0)


@pytest.mark.parametrize(
    ("costs", "expected"),
    [
        ({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 0.5}),
        ({"a": 3.0, "b": 3.0}, {"a": 1.0, "b": 1.0}),
        ({"a": 0.0, "b": 2.0}, {"a": 1.0, "b": 0.0}),  # free beats everything
    ],
)
def test_cost_relative_to_the_cheapest(costs: dict[str, float], expected: dict[str, float]) -> None:
    m = matrix(**{k: VariantSpec(cost=v) for k, v in costs.items()})
    states = [backend(k) for k in costs]
    assert dict(zip(costs, scorers.cost(states, ctx(m)), strict=True)) == pytest.approx(expected)


def test_cost_without_a_matrix_is_gpu_price_per_slot() -> None:
    states = [backend("a", cost=2.0, capacity=10), backend("b", cost=2.0, capacity=5)]
    assert scorers.cost(states, ctx()) == pytest.approx([1.0, 0.5])


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (backend("a"), 1.0),
        (backend("a", running=1, waiting=1), 1 / 3),
        (backend("a", running=2, pending=1), 1 / 4),
    ],
)
def test_least_loaded(state: BackendState, expected: float) -> None:
    assert scorers.least_loaded([state], ctx()) == pytest.approx([expected])


# -- pickers ---------------------------------------------------------------------------------


def test_best_takes_the_highest_score_and_ranks_the_rest() -> None:
    ranked = pickers.best({"a": 0.2, "b": 0.9, "c": 0.5}, features(), 0.0, entropy=12345)
    assert ranked == ["b", "c", "a"]


def test_best_breaks_near_ties_by_the_better_of_two_seeded_choices() -> None:
    scores = {"a": 0.90, "b": 0.89, "c": 0.88, "d": 0.10}
    chosen = {pickers.best(scores, features(), 0.03, pickers.mix(n))[0] for n in range(64)}
    # a, b, c are near-tied: the better of two distinct random picks is a or b (b when the pair
    # is b, c), never c (it loses every pair) and never d (not near the best)
    assert chosen == {"a", "b"}
    for n in range(64):
        ranked = pickers.best(scores, features(), 0.03, pickers.mix(n))
        assert sorted(ranked) == ["a", "b", "c", "d"] and ranked[-1] == "d"
        assert ranked == pickers.best(scores, features(), 0.03, pickers.mix(n))  # deterministic
    assert pickers.best(scores, features(), 0.0, pickers.mix(1))[0] == "a"  # no tolerance


def test_two_choices_are_distinct_and_in_range() -> None:
    for count in (2, 3, 7):
        for n in range(200):
            i, j = pickers.two_choices(count, pickers.mix(n))
            assert i != j and 0 <= i < count and 0 <= j < count


def test_round_robin_rotates_by_request_number() -> None:
    scores = {"c": 0.1, "a": 0.9, "b": 0.5}
    firsts = [pickers.round_robin(scores, features(sequence=n), 0.0, 0)[0] for n in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert pickers.round_robin(scores, features(sequence=1), 0.0, 0) == ["b", "c", "a"]
