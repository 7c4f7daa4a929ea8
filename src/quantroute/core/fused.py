"""The default plan's filters and scorers, run fused: one pass per candidate instead of one
plugin call after another.

A decision runs about a hundred Python calls through the plugin chain (each filter per
backend, each scorer, their helpers); at one request at a time that is the largest part of what
the gateway adds before its upstream call. The two functions here give ``decide`` the same
answer for a fraction of the calls, and only where they can:

- :func:`all_admitted` is a fast *admit*: True when every backend passes every default filter,
  hard and soft (the common case). It never rejects: when it says False, the plugin chain runs
  as before and writes the rejections, so every rejection's reason comes from its filter.
- :func:`fused_scores` rates the candidates with the built-in ``headroom``, ``latency`` and
  ``cost`` scorers in one loop, with the same arithmetic in the same order, so the values are
  the same floats.

The plugin functions in :mod:`.filters` and :mod:`.scorers` stay the reference: a property test
holds a fused decision equal to the chain's on generated snapshots, and a policy that names any
other filter or scorer simply runs the chain.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import NamedTuple

from quantroute.config import PolicyConfig
from quantroute.core import filters, scorers
from quantroute.core.filters import Filter, FilterContext
from quantroute.core.latency import LatencyEstimate, TtftFit
from quantroute.core.matrix import CapabilityMatrix
from quantroute.core.model import SERVING, BackendState, Health, Scores
from quantroute.core.prefix import uncached_tokens

FILTERS: dict[str, Filter] = {
    "health": filters.health,
    "ejection": filters.ejection,
    "context": filters.context,
    "kv_ceiling": filters.kv_ceiling,
    "quality": filters.quality,
    "kv_pressure": filters.kv_pressure,
    "backpressure": filters.backpressure,
    "recent_failure": filters.recent_failure,
    "slow_start": filters.slow_start,
}
"""The filters whose admit conditions :func:`all_admitted` holds, by the name a plan gives them."""
SCORERS: frozenset[str] = frozenset({"headroom", "latency", "cost"})
"""The scorers :func:`fused_scores` runs."""


def fusable_filters(chain: Sequence[tuple[str, Filter]]) -> bool:
    """Every filter of ``chain`` is one :func:`all_admitted` knows (the function itself, not
    only its name: a plugin registered over a built-in name is run as a plugin)."""
    return all(FILTERS.get(name) is f for name, f in chain)


def fusable_scorers(profile: Sequence[tuple[str, object]]) -> bool:
    """Every scorer of ``profile`` (name, callable) is a built-in :func:`fused_scores` runs."""
    return all(name in SCORERS and scorers.REGISTRY.get(name) is f for name, f in profile)


_HEADROOM, _LATENCY, _COST = 0, 1, 2
_KIND = {"headroom": _HEADROOM, "latency": _LATENCY, "cost": _COST}


def all_admitted(backends: Sequence[BackendState], ctx: FilterContext) -> bool:
    """True when each of ``backends`` passes ``health``, the passive filters, ``context``,
    ``kv_ceiling``, ``kv_pressure`` and ``quality`` (each filter's admit condition, inline).
    False says only "not all": the caller runs the filters themselves."""
    features, policy, matrix = ctx.features, ctx.policy, ctx.matrix
    needed = features.prompt_tokens + (features.max_tokens or 1)  # context
    extra = features.prompt_tokens + (features.max_tokens or policy.default_max_tokens)
    ceiling, threshold = policy.kv_hard_ceiling, policy.kv_pressure_threshold
    task, floor = features.task, ctx.quality_floor
    fresh = Health.FRESH
    for b in backends:
        if b.health is not fresh or b.passive is not SERVING:
            return False
        if needed > b.config.max_seq_len:
            return False
        m = b.metrics  # kv_after(b, 0) and kv_after(b, extra), inline
        if m is None or m.kv_cache_usage is None:
            return False  # kv_ceiling turns it away: usage unknown
        usage = predicted = m.kv_cache_usage
        blocks, size = m.num_gpu_blocks, m.block_size
        if blocks and size:
            capacity = blocks * size
            usage = m.kv_cache_usage + b.pending_kv_tokens / capacity
            predicted = m.kv_cache_usage + (b.pending_kv_tokens + extra) / capacity
        if usage >= ceiling or predicted > threshold:
            return False
        if matrix is not None:  # quality
            profile = matrix.variants.get(b.variant_id)
            measured = None if profile is None else profile.tasks.get(task)
            if measured is not None:
                if measured.stable is False:
                    return False
                score = measured.quality
                if score is not None and score < floor:
                    return False
    return True


class Prepared(NamedTuple):
    """What :func:`fused_scores` works out for one backend's state before it knows the request:
    every term of its headroom, latency and cost that the request does not enter, as
    :func:`~quantroute.core.scorers.latency_estimate` and the scorers compute them (the same
    operations in the same order, so the request's figures come out the same floats). Worked
    out once per state, matrix and policy (:func:`prepared`): one request at a time that is
    while the gateway is idle, not on the next request's path."""

    state: BackendState
    matrix: CapabilityMatrix | None
    policy: PolicyConfig
    kv_usage: float | None
    """The backend's KV cache usage (None: unknown)."""
    kv_capacity: int
    """KV blocks times block size (0: unknown: the usage is taken as it is)."""
    half_slots: float
    """Half the free sequence slots (running, this gateway's pending, waiting twice), clamped."""
    prior_queue_ms: float
    queue_ms: float
    """The queue prior times the measured queue factor."""
    prefill_rate: float
    """Prompt tokens per second: the matrix's, else the policy's default."""
    fit: TtftFit
    per_token_prior_ms: float | None
    per_token_measured_ms: float | None
    per_token_weight: float
    per_token_ms: float | None
    unit_cost: float


def prepare(
    backend: BackendState, matrix: CapabilityMatrix | None, policy: PolicyConfig
) -> Prepared:
    """``backend``'s :class:`Prepared` terms."""
    m = backend.metrics
    usage: float | None = None
    capacity = 0
    if m is not None and m.kv_cache_usage is not None:
        usage = m.kv_cache_usage
        blocks, size = m.num_gpu_blocks, m.block_size
        if blocks and size:
            capacity = blocks * size
    running = (m.num_running if m is not None else None) or 0.0
    waiting = (m.num_waiting if m is not None else None) or 0.0
    config = backend.config
    busy = (running + backend.pending_requests + 2.0 * waiting) / config.capacity
    slots = 1.0 - busy
    half_slots = 0.5 * (0.0 if slots < 0.0 else 1.0 if slots > 1.0 else slots)
    profile = None if matrix is None else matrix.variants.get(backend.variant_id)
    base = None if profile is None else profile.ttft_ms.p50  # scorers._prior
    if base is None:
        base = policy.default_ttft_ms
    queued = base * (1.0 + (running + backend.pending_requests) / config.capacity) + waiting * base
    rate = None if profile is None else profile.prefill_tokens_per_s
    if not rate:
        rate = policy.default_prefill_tokens_per_s
    ttft, prior_tok, measured_tok, weight, per_token = scorers.measured_terms(
        backend, policy, profile
    )
    if profile is not None and profile.cost_per_1m_output_tokens is not None:  # unit_cost
        unit = profile.cost_per_1m_output_tokens
    else:
        unit = config.gpu_cost_per_hour / config.capacity
    return Prepared(
        backend,
        matrix,
        policy,
        usage,
        capacity,
        half_slots,
        queued,
        ttft.queue_factor * queued,
        rate,
        ttft,
        prior_tok,
        measured_tok,
        weight,
        per_token,
        unit,
    )


PREPARED_KEPT = 4096
"""Backends whose prepared terms a cache holds before it starts over (a fleet's churn)."""


def prepared(
    backend: BackendState,
    matrix: CapabilityMatrix | None,
    policy: PolicyConfig,
    cache: MutableMapping[str, Prepared],
) -> Prepared:
    """``backend``'s terms from ``cache`` when they were worked out from this very state,
    matrix and policy; else worked out and kept there."""
    found = cache.get(backend.id)
    if (
        found is None
        or found.state is not backend
        or found.matrix is not matrix
        or found.policy is not policy
    ):
        if found is None and len(cache) >= PREPARED_KEPT:
            cache.clear()
        found = cache[backend.id] = prepare(backend, matrix, policy)
    return found


def fused_scores(
    admitted: Sequence[BackendState],
    ctx: FilterContext,
    profile: Sequence[tuple[str, float]],
    cache: MutableMapping[str, Prepared] | None = None,
) -> tuple[dict[str, Scores], dict[str, LatencyEstimate]]:
    """``_score`` of a profile of built-in scorers, and the latency estimate of every candidate
    (worked out whether or not ``latency`` is in the profile, as ``decide`` reports them).
    ``cache`` keeps each state's :class:`Prepared` terms from one call to the next (None: a
    cache for this call alone)."""
    features, policy, matrix = ctx.features, ctx.policy, ctx.matrix
    extra = features.prompt_tokens + (features.max_tokens or policy.default_max_tokens)
    tokens, ref = policy.latency_decode_tokens, policy.latency_reference_ms
    prompt_tokens, prefix = features.prompt_tokens, features.prefix
    kept: MutableMapping[str, Prepared] = {} if cache is None else cache
    total_weight = 0.0
    for _, weight in profile:
        total_weight += weight
    estimates: dict[str, LatencyEstimate] = {}
    rows: list[tuple[float, float, float]] = []  # headroom, latency, unit cost
    cheapest = float("inf")
    for b in admitted:
        p = prepared(b, matrix, policy, kept)
        kv = p.kv_usage  # headroom: kv_after(b, extra), inline
        if kv is not None and p.kv_capacity:
            kv = kv + (b.pending_kv_tokens + extra) / p.kv_capacity
        kv_free = 0.0 if kv is None else 1.0 - kv
        kv_free = 0.0 if kv_free < 0.0 else 1.0 if kv_free > 1.0 else kv_free
        head = 0.5 * kv_free + p.half_slots
        prompt = prompt_tokens  # the prefill prior: what is expected cached there is not sent
        if prefix is not None:
            share = prefix.share(b.id)
            if share > 0.0:
                prompt = uncached_tokens(prompt, share)
        prefill = 1000.0 * (b.prefill_backlog_tokens + prompt) / p.prefill_rate
        found = estimates[b.id] = LatencyEstimate(  # positional, in field order
            p.prior_queue_ms,
            prefill,
            p.fit,
            p.per_token_prior_ms,
            p.per_token_measured_ms,
            p.per_token_weight,
            p.per_token_ms,
        )
        ms = p.queue_ms + p.fit.prefill_factor * prefill  # latency, inline
        if tokens and found.per_token_ms is not None:
            ms += tokens * found.per_token_ms
        unit = p.unit_cost
        rows.append((head, ref / (ref + ms), unit))
        if unit < cheapest:
            cheapest = unit
    scores: dict[str, Scores] = {}
    kinds = [_KIND[name] for name, _ in profile]
    for b, (head, lat, unit) in zip(admitted, rows, strict=True):
        ratio = 1.0 if unit <= 0.0 else cheapest / unit  # cost, inline (alone: 1.0)
        values = (head, lat, 0.0 if ratio < 0.0 else 1.0 if ratio > 1.0 else ratio)
        parts: dict[str, float] = {}
        for (name, _), kind in zip(profile, kinds, strict=True):
            value = values[kind]
            parts[name] = 0.0 if value < 0.0 else 1.0 if value > 1.0 else value
        total = 0.0
        for name, weight in profile:
            total += weight * parts[name]
        scores[b.id] = Scores(total / total_weight, parts)
    return scores, estimates
