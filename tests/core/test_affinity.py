"""The prefix, session and cache-aware scorers, through the plugin registry and ``decide``."""

from __future__ import annotations

from typing import Any

import pytest

from quantroute.config import PolicyConfig
from quantroute.core.filters import FilterContext
from quantroute.core.model import RequestFeatures
from quantroute.core.plugins import compile_plan
from quantroute.core.prefix import PrefixView
from quantroute.core.scheduler import decide
from quantroute.core.scorers import expected_ttft_ms
from quantroute.errors import ConfigError

from .helpers import backend, features, policy, snapshot

VARIANTS = ("a", "b", "c")
# Policy sections as a config file spells them (JSON values).
PREFIX_POLICY: dict[str, Any] = {
    "filters": ["context"],
    "scorers": {
        "interactive": [
            {"name": "least_loaded", "weight": 0.5},
            {"name": "prefix", "weight": 0.5},
        ],
        "batch": [{"name": "least_loaded", "weight": 1.0}],
    },
    "tie_tolerance": 0.0,
}


def with_view(
    shares: dict[str, float], session: str | None = None, entries: dict[str, int] | None = None
) -> RequestFeatures:
    return features(prompt=2000, prefix=PrefixView(shares, entries or {}, session))


@pytest.mark.parametrize(
    ("loads", "shares", "chosen", "prefix_parts"),
    [
        # equal loads: the backend holding the prefix wins
        ((2, 2, 2), {"b": 0.9}, "b", {"a": 0.0, "b": 0.9, "c": 0.0}),
        # b is ahead by 8 (not more than 8): still its bonus, and it still wins
        ((1, 9, 1), {"b": 0.9}, "b", {"a": 0.0, "b": 0.9, "c": 0.0}),
        # b is 9 ahead and over 1.5x: bonus withdrawn, load decides (a and c tie: both idle)
        ((1, 10, 2), {"b": 0.9}, "a", {"a": 0.0, "b": 0.0, "c": 0.0}),
        # two backends hold different shares: the larger wins at equal load
        ((0, 0, 0), {"a": 0.3, "c": 0.8}, "c", {"a": 0.3, "b": 0.0, "c": 0.8}),
        # no view at all (tracking off): the prefix part is 0 everywhere
        ((3, 1, 2), None, "b", {"a": 0.0, "b": 0.0, "c": 0.0}),
    ],
)
def test_prefix_scorer_weighed_against_load(
    loads: tuple[int, int, int],
    shares: dict[str, float] | None,
    chosen: str,
    prefix_parts: dict[str, float],
) -> None:
    snap = snapshot(*(backend(v, running=n) for v, n in zip(VARIANTS, loads, strict=True)))
    f = features(prompt=2000) if shares is None else with_view(shares)
    decision = decide(f, snap, None, policy(VARIANTS, **PREFIX_POLICY))
    assert decision.chosen == chosen
    assert {k: s.parts["prefix"] for k, s in decision.scores.items()} == pytest.approx(prefix_parts)


def test_a_hot_prefix_spreads_once_its_backend_is_loaded() -> None:
    """Requests with the same cached prefix keep arriving; each one adds a request in flight
    to the backend chosen. The prefix holder takes them until the guard trips, then the
    others take turns while it drains no faster: the burst never all lands on one backend."""
    loads = dict.fromkeys(VARIANTS, 0)
    shares = {"a": 0.95}
    chosen = []
    p = policy(VARIANTS, **PREFIX_POLICY)
    for _ in range(40):
        snap = snapshot(*(backend(v, running=loads[v]) for v in VARIANTS))
        decision = decide(with_view(shares), snap, None, p)
        assert decision.chosen is not None
        chosen.append(decision.chosen)
        loads[decision.chosen] += 1
    share_a = chosen.count("a") / len(chosen)
    assert chosen[:9] == ["a"] * 9  # while within the guard, the cached backend wins
    assert 0.33 < share_a < 0.6
    assert max(loads.values()) - min(loads.values()) <= 9 + 1


def test_latency_estimate_counts_only_uncached_prefill() -> None:
    p = policy(VARIANTS, default_prefill_tokens_per_s=1000.0, default_ttft_ms=100.0)
    b = backend("a")
    cold = FilterContext(features(prompt=4000), p.config, None, 0.0)
    warm_features = features(prompt=4000, prefix=PrefixView({"a": 0.75}, {}))
    warm = FilterContext(warm_features, p.config, None, 0.0)
    assert expected_ttft_ms(b, cold) - expected_ttft_ms(b, warm) == pytest.approx(3000.0, abs=5)


def test_session_scorer_prefers_the_sessions_backend_until_overloaded() -> None:
    session_policy: dict[str, Any] = {
        "filters": ["context"],
        "scorers": {
            "interactive": [
                {"name": "least_loaded", "weight": 0.5},
                {"name": "session", "weight": 0.5, "parameters": {"balance_abs_threshold": 4}},
            ],
            "batch": [{"name": "least_loaded", "weight": 1.0}],
        },
        "tie_tolerance": 0.0,
    }
    p = policy(VARIANTS, **session_policy)
    f = with_view({}, session="c")
    balanced = snapshot(backend("a", running=1), backend("b", running=1), backend("c", running=3))
    assert decide(f, balanced, None, p).chosen == "c"
    busy = snapshot(backend("a", running=1), backend("b", running=2), backend("c", running=6))
    assert decide(f, busy, None, p).chosen == "a"  # c is 5 ahead and over 1.5x: no bonus
    assert decide(with_view({}), balanced, None, p).chosen in {"a", "b"}  # no session: load


CACHE_AWARE: dict[str, Any] = {
    "filters": ["context"],
    "scorers": {
        "interactive": [
            {"name": "cache_aware", "weight": 1.0, "parameters": {"balance_abs_threshold": 4}}
        ],
        "batch": [{"name": "cache_aware", "weight": 1.0}],
    },
    "tie_tolerance": 0.0,
}


@pytest.mark.parametrize(
    ("loads", "shares", "entries", "chosen"),
    [
        ((1, 1, 1), {"b": 0.9}, {"a": 5, "b": 50, "c": 9}, "b"),  # match over 30%
        ((1, 1, 1), {"b": 0.2}, {"a": 5, "b": 50, "c": 9}, "a"),  # else the smallest tree
        ((1, 9, 2), {"b": 0.9}, {"a": 5, "b": 50, "c": 9}, "a"),  # imbalanced: shortest queue
    ],
)
def test_cache_aware_comparison_policy(
    loads: tuple[int, int, int], shares: dict[str, float], entries: dict[str, int], chosen: str
) -> None:
    snap = snapshot(*(backend(v, running=n) for v, n in zip(VARIANTS, loads, strict=True)))
    decision = decide(
        with_view(shares, entries=entries), snap, None, policy(VARIANTS, **CACHE_AWARE)
    )
    assert decision.chosen == chosen
    assert sorted(s.total for s in decision.scores.values()) == [0.0, 0.0, 1.0]


def test_plan_knows_when_the_index_is_needed_and_parameters_are_checked() -> None:
    assert not compile_plan(PolicyConfig()).tracks_prefix
    assert compile_plan(PolicyConfig.model_validate(PREFIX_POLICY)).tracks_prefix
    assert compile_plan(PolicyConfig.model_validate(CACHE_AWARE)).tracks_prefix
    bad = {
        "scorers": {
            "interactive": [
                {"name": "prefix", "weight": 1, "parameters": {"balance_rel_threshold": 0.5}}
            ]
        }
    }
    with pytest.raises(ConfigError, match="balance_rel_threshold"):
        compile_plan(PolicyConfig.model_validate(bad))
