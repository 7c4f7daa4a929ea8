"""Cache-affinity scorers: ``prefix``, ``session`` and the ``cache_aware`` comparison policy.

They read what the gateway's prefix index expects for this request (``features.prefix``, filled
in just before the decision; see :mod:`quantroute.core.prefix`) and are weighed against the load
scorers like any other. What keeps a hot prefix from piling every request onto one backend:

1. the *balance guard*: a backend whose load (running + waiting + sent since its last scrape)
   is more than ``balance_abs_threshold`` above the least loaded candidate's *and* more than
   ``balance_rel_threshold`` times it gets no affinity bonus at all, so load alone decides
   there (the Rust routers' imbalance test, applied per backend);
2. the weights: affinity is one term of the weighted sum, so headroom and latency still
   pull the other way as the backend fills;
3. the latency estimate counts only the prefill a backend still has to do (the prompt minus
   its expected cached share) and the prefill backlog the gateway has sent there, so a cached
   backend looks fast until the requests queued on it outweigh what the cache saves;
4. the KV filters apply before any scorer: a backend at the KV ceiling is never a candidate.

``cache_aware`` is the comparison policy of sglang's router and vLLM's ``vllm-router``
(:mod:`quantroute.core.cache_aware`): 1.0 for the backend it would pick, 0 for the others; use
it as the only scorer with the ``best`` picker and ``tie_tolerance: 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from pydantic import Field, NonNegativeFloat

from quantroute.base import FrozenModel
from quantroute.core.cache_aware import CacheAwareCandidate, CacheAwareSettings, cache_aware_choice
from quantroute.core.filters import FilterContext
from quantroute.core.model import BackendState
from quantroute.core.prefix import BalanceGuard, prefix_score
from quantroute.core.scorers import load_of


class AffinityParams(FrozenModel):
    """Parameters of the ``prefix`` and ``session`` scorers."""

    balance_abs_threshold: NonNegativeFloat = 8.0
    balance_rel_threshold: float = Field(default=1.5, ge=1.0)

    def guard(self) -> BalanceGuard:
        return BalanceGuard(self.balance_abs_threshold, self.balance_rel_threshold)


class CacheAwareParams(FrozenModel):
    """Parameters of the ``cache_aware`` comparison scorer (vllm-router's defaults)."""

    cache_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    balance_abs_threshold: NonNegativeFloat = 64.0
    balance_rel_threshold: float = Field(default=1.5, ge=1.0)


def total_load(backend: BackendState) -> float:
    load = load_of(backend)
    return load.running + load.waiting + load.pending


def prefix(
    candidates: Sequence[BackendState], ctx: FilterContext, *, guard: BalanceGuard
) -> list[float]:
    """The expected share of this prompt cached on each candidate; 0 where it is overloaded."""
    view = ctx.features.prefix
    if view is None:
        return [0.0] * len(candidates)
    loads = [total_load(c) for c in candidates]
    return [
        prefix_score(view.share(c.id), load, loads, guard)
        for c, load in zip(candidates, loads, strict=True)
    ]


def session(
    candidates: Sequence[BackendState], ctx: FilterContext, *, guard: BalanceGuard
) -> list[float]:
    """1.0 for the backend that served this session last (unless overloaded), else 0."""
    view = ctx.features.prefix
    last = None if view is None else view.session_backend
    if last is None or all(c.id != last for c in candidates):
        return [0.0] * len(candidates)
    loads = [total_load(c) for c in candidates]
    least = min(loads)
    return [
        0.0 if c.id != last or guard.overloaded(load, least) else 1.0
        for c, load in zip(candidates, loads, strict=True)
    ]


def cache_aware(
    candidates: Sequence[BackendState], ctx: FilterContext, *, settings: CacheAwareSettings
) -> list[float]:
    """1.0 for the candidate the Rust routers' cache-aware policy would choose, else 0."""
    view = ctx.features.prefix
    rows = [
        CacheAwareCandidate(
            c.id,
            total_load(c),
            view.share(c.id) if view else 0.0,
            view.entries.get(c.id, 0) if view else 0,
        )
        for c in candidates
    ]
    chosen, _rule = cache_aware_choice(rows, settings)
    return [1.0 if c.id == chosen else 0.0 for c in candidates]


def build_prefix(params: AffinityParams) -> partial[list[float]]:
    return partial(prefix, guard=params.guard())


def build_session(params: AffinityParams) -> partial[list[float]]:
    return partial(session, guard=params.guard())


def build_cache_aware(params: CacheAwareParams) -> partial[list[float]]:
    settings = CacheAwareSettings(
        params.cache_threshold, params.balance_abs_threshold, params.balance_rel_threshold
    )
    return partial(cache_aware, settings=settings)


PREFIX_SCORERS = ("prefix", "session", "cache_aware")
"""Scorers that read the prefix index: a policy naming one turns prefix tracking on."""
