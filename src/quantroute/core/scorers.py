"""Scorers: each rates a decision's candidates, one value in [0, 1] each (higher is better)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from quantroute.config import PolicyConfig
from quantroute.core.filters import FilterContext, kv_after, request_kv_tokens
from quantroute.core.latency import LatencyEstimate, TtftFit, blend, fit, peer_fit
from quantroute.core.matrix import VariantProfile
from quantroute.core.model import BackendState
from quantroute.core.prefix import uncached_tokens

Scorer = Callable[[Sequence[BackendState], FilterContext], Sequence[float]]
"""A scorer rates every candidate of a decision at once, as the Gateway API Inference
Extension's scorers do: one value per candidate, in their order, higher is better (``decide``
clamps each to [0, 1]). Called once per decision, so what the candidates share (the request's
KV tokens, the cheapest unit cost, every candidate's load) is worked out once."""
PerBackendScorer = Callable[[BackendState, Sequence[BackendState], FilterContext], float]
"""One candidate at a time (given all of them): :func:`each` makes a :data:`Scorer` of it."""


class Load(NamedTuple):
    """A backend's load as the scorers read it (a tuple: built several times per decision)."""

    running: float
    waiting: float
    pending: float
    capacity: float


def load_of(backend: BackendState) -> Load:
    m = backend.metrics
    running = (m.num_running if m and m.num_running is not None else None) or 0.0
    waiting = (m.num_waiting if m and m.num_waiting is not None else None) or 0.0
    return Load(running, waiting, float(backend.pending_requests), float(backend.config.capacity))


def headroom(candidates: Sequence[BackendState], ctx: FilterContext) -> list[float]:
    """Free KV (after this request) and free sequence slots; waiting requests count double."""
    extra = request_kv_tokens(ctx.features, ctx.policy)
    out: list[float] = []
    for backend in candidates:
        kv = kv_after(backend, extra)
        kv_free = 0.0 if kv is None else 1.0 - kv
        kv_free = 0.0 if kv_free < 0.0 else 1.0 if kv_free > 1.0 else kv_free  # clamp, inline
        m = backend.metrics  # load_of, inline: run per candidate per decision
        running = (m.num_running if m is not None else None) or 0.0
        waiting = (m.num_waiting if m is not None else None) or 0.0
        busy = (running + backend.pending_requests + 2.0 * waiting) / backend.config.capacity
        slots = 1.0 - busy
        out.append(0.5 * kv_free + 0.5 * (0.0 if slots < 0.0 else 1.0 if slots > 1.0 else slots))
    return out


def _variant(backend: BackendState, ctx: FilterContext) -> VariantProfile | None:
    """The matrix's profile of the backend's variant (None: no matrix, or not profiled)."""
    if ctx.matrix is None:
        return None
    return ctx.matrix.variants.get(backend.variant_id)


def _prior(
    backend: BackendState, ctx: FilterContext, profile: VariantProfile | None
) -> tuple[float, float]:
    """:func:`prior_ttft_ms` with the variant's profile looked up once (by the caller, which
    reads it too). Written out in one function: it runs per candidate per decision."""
    policy = ctx.policy
    base = None if profile is None else profile.ttft_ms.p50
    if base is None:
        base = policy.default_ttft_ms
    m = backend.metrics  # load_of, inline
    running = (m.num_running if m is not None else None) or 0.0
    waiting = (m.num_waiting if m is not None else None) or 0.0
    capacity = backend.config.capacity
    queued = base * (1.0 + (running + backend.pending_requests) / capacity) + waiting * base
    features = ctx.features  # the prompt, less what the prefix index expects cached there
    prompt = features.prompt_tokens
    if features.prefix is not None:
        share = features.prefix.share(backend.id)
        if share > 0.0:
            prompt = uncached_tokens(prompt, share)
    rate = None if profile is None else profile.prefill_tokens_per_s
    if not rate:
        rate = policy.default_prefill_tokens_per_s
    return queued, 1000.0 * (backend.prefill_backlog_tokens + prompt) / rate


def prior_ttft_ms(backend: BackendState, ctx: FilterContext) -> tuple[float, float]:
    """The matrix prior's TTFT, split: queueing (matrix TTFT scaled by load and queue) and
    prefill (this prompt, less what is expected to be cached there, and the prompts already sent
    to the backend that have not started answering, both at its prefill rate)."""
    return _prior(backend, ctx, _variant(backend, ctx))


MeasuredTerms = tuple[TtftFit, float | None, float | None, float, float | None]
"""The TTFT fit, and the time per token: prior, measured, the measurement's weight, blended."""


def measured_terms(
    backend: BackendState, policy: PolicyConfig, profile: VariantProfile | None
) -> MeasuredTerms:
    """What a latency estimate takes from the measurements (the backend's own, its variant
    peers', as far as the policy lets them count) and the matrix's time per token."""
    observed = backend.observed if policy.measured_latency else None
    peers = backend.peers if policy.measured_latency else None
    k = policy.latency_prior_samples
    prior_tok = None if profile is None else profile.itl_ms.p50
    if peers is not None and peers.per_token_s is not None:  # the twins' time per token first
        prior_tok = blend(prior_tok, 1000.0 * peers.per_token_s, peers.per_token_n, k)
    measured_tok, n_tok = None, 0.0
    if observed is not None and observed.per_token_s is not None:
        measured_tok, n_tok = 1000.0 * observed.per_token_s, observed.per_token_n
    ttft = backend.ttft_fit
    if ttft is None:
        ttft = fit(observed, k, peer_fit(peers, k))
    weight = n_tok / (n_tok + k) if measured_tok is not None else 0.0
    return ttft, prior_tok, measured_tok, weight, blend(prior_tok, measured_tok, n_tok, k)


def latency_estimate(backend: BackendState, ctx: FilterContext) -> LatencyEstimate:
    """The prior split, and the factors and time per token measured at this backend blended in
    by how much has been observed (:mod:`quantroute.core.latency`)."""
    profile = _variant(backend, ctx)
    queue, prefill = _prior(backend, ctx, profile)
    return LatencyEstimate(queue, prefill, *measured_terms(backend, ctx.policy, profile))


def estimate(backend: BackendState, ctx: FilterContext) -> LatencyEstimate:
    """:func:`latency_estimate`, once per backend and decision (``ctx.estimates``)."""
    found = ctx.estimates.get(backend.id)
    if found is None:
        found = ctx.estimates[backend.id] = latency_estimate(backend, ctx)
    return found


def expected_ttft_ms(backend: BackendState, ctx: FilterContext) -> float:
    return estimate(backend, ctx).ttft_ms


def latency(candidates: Sequence[BackendState], ctx: FilterContext) -> list[float]:
    """``ref / (ref + expected ms)``: the expected TTFT, plus ``latency_decode_tokens`` at the
    blended time per token when there is one."""
    policy = ctx.policy
    tokens, ref = policy.latency_decode_tokens, policy.latency_reference_ms
    estimates = ctx.estimates
    out: list[float] = []
    for backend in candidates:
        found = estimates.get(backend.id)  # estimate(), inline
        if found is None:
            found = estimates[backend.id] = latency_estimate(backend, ctx)
        f = found.fit
        ms = f.queue_factor * found.prior_queue_ms + f.prefill_factor * found.prior_prefill_ms
        if tokens and found.per_token_ms is not None:
            ms += tokens * found.per_token_ms
        out.append(ref / (ref + ms))
    return out


def unit_cost(backend: BackendState, ctx: FilterContext) -> float:
    """Matrix cost per 1M output tokens; without one, GPU price per sequence slot as a proxy."""
    profile = _variant(backend, ctx)
    if profile is not None and profile.cost_per_1m_output_tokens is not None:
        return profile.cost_per_1m_output_tokens
    return backend.config.gpu_cost_per_hour / backend.config.capacity


def cost(candidates: Sequence[BackendState], ctx: FilterContext) -> list[float]:
    """The cheapest candidate's unit cost over this one's: 1.0 for the cheapest (and for a free
    one, or a lone candidate)."""
    if len(candidates) == 1:
        return [1.0]
    units = [unit_cost(c, ctx) for c in candidates]
    cheapest = min(units)
    out: list[float] = []
    for mine in units:
        ratio = 1.0 if mine <= 0.0 else cheapest / mine
        out.append(0.0 if ratio < 0.0 else 1.0 if ratio > 1.0 else ratio)  # clamp, inline
    return out


def least_loaded(candidates: Sequence[BackendState], _ctx: FilterContext) -> list[float]:
    out: list[float] = []
    for backend in candidates:
        m = backend.metrics  # load_of, inline
        running = (m.num_running if m is not None else None) or 0.0
        waiting = (m.num_waiting if m is not None else None) or 0.0
        out.append(1.0 / (1.0 + running + waiting + backend.pending_requests))
    return out


def each(score: PerBackendScorer) -> Scorer:
    """A scorer from a function that rates one candidate at a time (given all of them)."""

    def score_all(candidates: Sequence[BackendState], ctx: FilterContext) -> list[float]:
        return [score(backend, candidates, ctx) for backend in candidates]

    return score_all


REGISTRY: dict[str, Scorer] = {
    "headroom": headroom,
    "latency": latency,
    "cost": cost,
    "least_loaded": least_loaded,
}
