"""``decide``: filters -> scorers -> picker over an immutable snapshot. Pure and deterministic."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field

from quantroute.config import POOLING_APIS, GroupConfig, PolicyConfig
from quantroute.core import filters, fused, pickers, scorers
from quantroute.core.filters import Filter, FilterContext
from quantroute.core.latency import LatencyEstimate
from quantroute.core.matrix import CapabilityMatrix
from quantroute.core.model import (
    SERVING,
    BackendState,
    Decision,
    Health,
    Outcome,
    Rejection,
    RequestFeatures,
    Scores,
    Snapshot,
)
from quantroute.core.plugins import Plan, WeightedScorer, compile_plan
from quantroute.core.saturation import only_saturated


@dataclass(frozen=True, slots=True)
class Policy:
    config: PolicyConfig
    groups: tuple[GroupConfig, ...] = ()
    plan: Plan = field(init=False, repr=False, compare=False)
    """The policy's plugins, looked up and built once (ConfigError if one is unknown)."""
    by_name: dict[str, GroupConfig] = field(init=False, repr=False, compare=False)
    """The groups by name (the first of a name, as a scan would find it): one lookup per request."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", compile_plan(self.config))
        by_name: dict[str, GroupConfig] = {}
        for g in self.groups:
            by_name.setdefault(g.name, g)
        object.__setattr__(self, "by_name", by_name)

    def group(self, name: str) -> GroupConfig | None:
        return self.by_name.get(name)


def candidates_for(
    model: str, snapshot: Snapshot, policy: Policy
) -> tuple[list[BackendState], GroupConfig | None]:
    """Backends that serve ``model``: a group's variants, or a backend by served name/id/variant
    (whatever APIs they serve: ``decide`` keeps those of the request's API)."""
    group = policy.by_name.get(model)
    if group is not None:
        variants = group.variants  # variant_id, inline: per backend per request
        return [b for b in snapshot.backends if b.variant_id in variants], group
    named = [
        b for b in snapshot.backends if model in (b.config.served_model_name, b.id, b.variant_id)
    ]
    return named, None


Filters = Sequence[tuple[str, Filter]]


_SERVING_CHAINS: dict[tuple[tuple[str, Filter], ...], tuple[tuple[str, Filter], ...]] = {}
"""Each filter chain without its passive-health filters, by chain (a handful per policy)."""


def _serving_chain(chain: Filters) -> tuple[tuple[str, Filter], ...]:
    """``chain`` less the filters that admit every backend whose passive state is
    :data:`SERVING` (most backends, most of the time): four calls per backend saved."""
    key = tuple(chain)
    found = _SERVING_CHAINS.get(key)
    if found is None:
        if len(_SERVING_CHAINS) >= 64:  # policies reloaded many times: start over
            _SERVING_CHAINS.clear()
        found = _SERVING_CHAINS[key] = tuple(
            (n, f) for n, f in key if f not in filters.PASSIVE_FILTERS
        )
    return found


def _filter(
    backends: Sequence[BackendState], ctx: FilterContext, chain: Filters
) -> tuple[list[BackendState], dict[str, tuple[Rejection, ...]]]:
    admitted: list[BackendState] = []
    rejected: dict[str, tuple[Rejection, ...]] = {}
    serving = _serving_chain(chain)
    for backend in backends:
        reasons: list[Rejection] | None = None
        for _, f in serving if backend.passive is SERVING else chain:
            reason = f(backend, ctx)
            if reason is not None:
                reasons = [reason] if reasons is None else [*reasons, reason]
        if reasons is None:
            admitted.append(backend)
        else:
            rejected[backend.id] = tuple(reasons)
    return admitted, rejected


def _score(
    admitted: Sequence[BackendState], ctx: FilterContext, profile: Sequence[WeightedScorer]
) -> dict[str, Scores]:
    """Each scorer rates every candidate in one call; a candidate's total is the weighted mean
    of its values, each clamped to [0, 1]."""
    count = len(admitted)
    columns: list[Sequence[float]] = []
    total_weight = 0.0
    for s in profile:
        column = s.score(admitted, ctx)
        if len(column) != count:
            raise ValueError(f"scorer {s.name!r} rated {len(column)} of {count} candidates")
        columns.append(column)
        total_weight += s.weight
    result: dict[str, Scores] = {}
    for i, backend in enumerate(admitted):
        parts: dict[str, float] = {}
        for s, column in zip(profile, columns, strict=True):
            value = column[i]  # clamped to [0, 1], inline
            parts[s.name] = 0.0 if value < 0.0 else 1.0 if value > 1.0 else value
        total = 0.0
        for s in profile:  # by name: a name given twice weighs its last value twice
            total += s.weight * parts[s.name]
        result[backend.id] = Scores(total / total_weight, parts)
    return result


def _kv_pressure(rejected: dict[str, tuple[Rejection, ...]]) -> tuple[str, ...]:
    return tuple(k for k, v in rejected.items() if any(r.kv_pressure for r in v))


def _reject_all(
    rejected: dict[str, tuple[Rejection, ...]], group: GroupConfig | None, floor: float
) -> Decision:
    too_long = bool(rejected) and all(
        any(r.filter == "context" for r in reasons) for reasons in rejected.values()
    )
    outcome = Outcome.TOO_LONG if too_long else Outcome.NO_BACKEND
    name = group.name if group else None
    saturated = not too_long and only_saturated(rejected)
    return Decision(
        outcome, None, (), {}, rejected, group=name, quality_floor=floor, saturated=saturated
    )


def _below_floor(
    pool: Sequence[BackendState],
    ctx: FilterContext,
    hard: Filters,
    rejected: dict[str, tuple[Rejection, ...]],
) -> tuple[list[BackendState], dict[str, tuple[Rejection, ...]], tuple[str, ...]]:
    """When some backend was turned away by the quality floor alone (the others by context,
    health or KV), serve there rather than answer a 503 that no retry can ever clear."""
    floor_only = [
        b for b in pool if rejected.get(b.id) and all(r.filter == "quality" for r in rejected[b.id])
    ]
    if not floor_only:
        return [], rejected, ()
    admitted, again = _filter(pool, ctx, [(n, f) for n, f in hard if n != "quality"])
    return admitted, again, ("quality",)


def _admit(
    pool: Sequence[BackendState],
    ctx: FilterContext,
    hard: Filters,
    soft: Filters,
    relaxed: tuple[str, ...],
) -> tuple[list[BackendState], dict[str, tuple[Rejection, ...]], tuple[str, ...]]:
    """The filter chain: hard filters (below the quality floor if the policy allows it when
    nothing else is left), then soft ones, relaxed when they alone would leave no candidate.
    No candidate admitted: the rejections are the decision's answer."""
    admitted, rejected = _filter(pool, ctx, hard)
    if not admitted and ctx.policy.quality_fallback == "best_available":
        admitted, rejected, relaxed = _below_floor(pool, ctx, hard, rejected)
    if not admitted:
        return admitted, rejected, relaxed
    kept, soft_rejected = _filter(admitted, ctx, soft)
    if kept:
        admitted = kept
        rejected.update(soft_rejected)
    elif soft_rejected:
        used = {r.filter for reasons in soft_rejected.values() for r in reasons}
        relaxed = (*relaxed, *(name for name, _ in soft if name in used))
    return admitted, rejected, relaxed


def _estimates(admitted: Sequence[BackendState], ctx: FilterContext) -> dict[str, LatencyEstimate]:
    """The latency estimate of every candidate, in their order: the ones the latency scorer
    worked out, the rest worked out here (no latency scorer in the profile)."""
    found = ctx.estimates
    out: dict[str, LatencyEstimate] = {}
    for b in admitted:
        key = b.id
        known = found.get(key)
        out[key] = known if known is not None else scorers.estimate(b, ctx)
    return out


def metrics_outage(backends: Sequence[BackendState], cfg: PolicyConfig) -> bool:
    """No backend of the fleet has fresh metrics (the metrics themselves are broken, not one
    group's backends) and the policy says to fail open: route on the gateway's own account
    (least loaded: an even spread), without the filters that need live metrics; passive health
    still keeps backends that fail out."""
    if cfg.metrics_outage != "fail_open":
        return False
    for b in backends:  # noqa: SIM110 (a loop, not all() of a generator: once per request)
        if b.health is Health.FRESH:
            return False
    return True


def decide(
    features: RequestFeatures,
    snapshot: Snapshot,
    matrix: CapabilityMatrix | None,
    policy: Policy,
    *,
    downgrade: bool = False,
    prepared: MutableMapping[str, fused.Prepared] | None = None,
) -> Decision:
    """The routing decision. ``downgrade``: the quality floor is set aside (flow control asks
    for this when the variants meeting it are saturated and the group allows a downgrade); a
    decision that routes then says ``downgrade`` among its relaxed filters. ``prepared`` keeps
    each backend state's request-independent terms for the next decision
    (:func:`.fused.prepared`): a memo, the decision is the same without it."""
    cfg, plan = policy.config, policy.plan
    pool, group = candidates_for(features.model, snapshot, policy)
    floor = group.quality_floor if group else 0.0
    if not pool and group is None:
        return Decision(Outcome.UNKNOWN_MODEL, None, (), {}, {})
    if not pool:  # a group none of whose variants has a backend now: there, but unservable
        return _reject_all({}, group, floor)
    # Only the backends that serve the request's API are candidates at all (an embedding model
    # in a group is not "rejected" by every chat request; it is simply not one of its kind).
    pool = [b for b in pool if features.api in b.config.apis]
    if not pool:
        name = group.name if group else None
        return Decision(Outcome.UNSUPPORTED_API, None, (), {}, {}, group=name)
    pooling = features.api in POOLING_APIS
    if pooling:  # the matrix measures generation: embeddings and scores go on load alone
        matrix = None
    ctx = FilterContext(features, cfg, matrix, floor)
    profile = plan.pooling if pooling else plan.scorers[features.latency_class]
    hard, soft = plan.hard, plan.soft
    relaxed: tuple[str, ...] = ()
    if metrics_outage(snapshot.backends, cfg):
        hard, soft, profile = plan.outage_hard, plan.outage_soft, plan.even_spread
        relaxed = tuple(sorted(filters.NEED_METRICS))
    if downgrade:
        hard = tuple((n, f) for n, f in hard if n != "quality")
        relaxed = (*relaxed, "downgrade")
    rejected: dict[str, tuple[Rejection, ...]] = {}
    if hard is plan.hard and plan.fused_filters and fused.all_admitted(pool, ctx):
        admitted = pool  # every filter admits every candidate: what the chain would find
    else:
        admitted, rejected, relaxed = _admit(pool, ctx, hard, soft, relaxed)
        if not admitted:
            return _reject_all(rejected, group, floor)
    pressure = _kv_pressure(rejected) if rejected else ()
    pairs = None if pooling else plan.fused_scorers.get(features.latency_class)
    if pairs is not None and profile is plan.scorers[features.latency_class]:
        scores, latency = fused.fused_scores(admitted, ctx, pairs, prepared)
    else:
        scores = _score(admitted, ctx, profile)
        latency = {} if pooling else _estimates(admitted, ctx)
    entropy = pickers.mix(cfg.seed * 1_000_003 + features.sequence)
    totals = {k: s.total for k, s in scores.items()}
    ranked = plan.picker(totals, features, cfg.tie_tolerance, entropy)
    return Decision(
        Outcome.ROUTED,
        ranked[0],
        tuple(ranked),
        scores,
        rejected,
        kv_pressure=pressure,
        relaxed=relaxed,
        group=group.name if group else None,
        quality_floor=floor,
        latency=latency,
    )
