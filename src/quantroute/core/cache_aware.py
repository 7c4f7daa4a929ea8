"""The Rust routers' cache-aware policy, as a comparison picker. Pure.

The policy of sglang's router and vLLM's ``vllm-router`` (``cache_aware``), re-expressed over
this gateway's prefix index instead of their per-worker approximate radix trees of request text:

1. *Imbalanced?* With L the candidates' loads, the system is imbalanced when
   ``max(L) - min(L) > balance_abs_threshold`` and ``max(L) > min(L) * balance_rel_threshold``.
   Then: the least loaded candidate (shortest queue), whatever the cache.
2. Otherwise, the candidate with the longest prefix match; if its match rate (matched share of
   the prompt) is above ``cache_threshold``, it wins.
3. Otherwise the candidate whose tree is smallest (most cache room left).

The caller records the prompt on the chosen backend in every case, as the routers insert the
request text into the chosen worker's tree. Their defaults: ``cache_threshold`` 0.3,
``balance_abs_threshold`` 64, ``balance_rel_threshold`` 1.5 (vllm-router; sglang's own
launcher used 0.5 / 32 / 1.0001). Ties are broken by candidate order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheAwareSettings:
    cache_threshold: float = 0.3
    balance_abs_threshold: float = 64.0
    balance_rel_threshold: float = 1.5


@dataclass(frozen=True, slots=True)
class CacheAwareCandidate:
    backend_id: str
    load: float
    """Requests the router has in flight there (or running + waiting + not yet scraped)."""
    match_rate: float
    """Share of this prompt found in the backend's tree."""
    tree_size: int
    """Entries the backend's tree holds."""


def imbalanced(loads: Sequence[float], settings: CacheAwareSettings) -> bool:
    low, high = min(loads), max(loads)
    return (
        high - low > settings.balance_abs_threshold and high > low * settings.balance_rel_threshold
    )


def cache_aware_choice(
    candidates: Sequence[CacheAwareCandidate], settings: CacheAwareSettings
) -> tuple[str, str]:
    """(the chosen backend id, which rule chose it: "balance", "cache" or "smallest_tree")."""
    if not candidates:
        raise ValueError("no candidates")
    if imbalanced([c.load for c in candidates], settings):
        return min(candidates, key=lambda c: c.load).backend_id, "balance"
    best = max(candidates, key=lambda c: c.match_rate)
    if best.match_rate > settings.cache_threshold:
        return best.backend_id, "cache"
    return min(candidates, key=lambda c: c.tree_size).backend_id, "smallest_tree"


__all__ = ["CacheAwareCandidate", "CacheAwareSettings", "cache_aware_choice", "imbalanced"]
