"""Filters: each looks at one backend and returns ``None`` (admit) or a :class:`Rejection`.

Hard filters always apply. ``kv_pressure`` is soft: when it alone would leave no candidate, it is
relaxed (the hard ``kv_ceiling`` still protects the backends) and the decision records that.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quantroute.base import quick_init
from quantroute.config import PolicyConfig
from quantroute.core.matrix import CapabilityMatrix
from quantroute.core.model import BackendState, Health, Rejection, RequestFeatures
from quantroute.core.pickers import mix

if TYPE_CHECKING:
    from quantroute.core.latency import LatencyEstimate


@quick_init
@dataclass(frozen=True, slots=True)
class FilterContext:
    features: RequestFeatures
    policy: PolicyConfig
    matrix: CapabilityMatrix | None
    quality_floor: float
    estimates: dict[str, LatencyEstimate] = field(default_factory=dict, compare=False)
    """The latency estimate per backend, computed once per decision (the latency scorer and
    the decision's ``latency`` read the same one): a memo of a pure function of the
    context and the backend's state, never carried from one decision to the next."""


Filter = Callable[[BackendState, FilterContext], Rejection | None]
SOFT_FILTERS: frozenset[str] = frozenset({"kv_pressure"})
NEED_METRICS: frozenset[str] = frozenset({"health", "kv_ceiling", "kv_pressure"})
"""Filters that judge on live metrics: set aside in a metrics outage when failing open."""


def request_kv_tokens(features: RequestFeatures, policy: PolicyConfig) -> int:
    """KV tokens the request will hold at its end: prompt plus the output it may generate."""
    return features.prompt_tokens + (features.max_tokens or policy.default_max_tokens)


def kv_after(backend: BackendState, extra_tokens: int) -> float | None:
    """KV usage with the gateway's pending account and ``extra_tokens`` added; None if unknown."""
    metrics = backend.metrics
    if metrics is None or metrics.kv_cache_usage is None:
        return None
    blocks, size = metrics.num_gpu_blocks, metrics.block_size  # kv_capacity_tokens, inline
    if not blocks or not size:
        return metrics.kv_cache_usage
    return metrics.kv_cache_usage + (backend.pending_kv_tokens + extra_tokens) / (blocks * size)


def health(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    if backend.health is Health.FRESH:
        return None
    return Rejection("health", f"backend is {backend.health.value}")


def ejection(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    """Passive health: the gateway's own outcomes with this backend ejected it for a while."""
    if backend.passive.ejected is None:
        return None
    return Rejection("ejection", backend.passive.ejected)


def backpressure(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    """Soft: the backend answered 429/503 a moment ago; others take the request if they can."""
    if not backend.passive.backpressure:
        return None
    return Rejection("backpressure", "answered 429/503 a moment ago")


def recent_failure(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    """Soft: the backend failed a moment ago; others take the request if they can (a backend
    that fails fast looks idle and would otherwise draw a herd before it is ejected)."""
    if not backend.passive.suspect:
        return None
    return Rejection("recent_failure", "failed a moment ago")


def _draw(backend_id: str, ctx: FilterContext) -> float:
    """A deterministic draw in [0, 1) per (seed, request, backend)."""
    seed = ctx.policy.seed * 1_000_003 + ctx.features.sequence
    return mix(seed ^ zlib.crc32(backend_id.encode())) / 2.0**64


def slow_start(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    """Soft: back from an ejection or an outage, a backend takes ``weight`` of the requests it
    would otherwise be offered (the weight ramps to 1), instead of a flood because it looks idle."""
    weight = backend.passive.weight
    if weight >= 1.0 or _draw(backend.id, ctx) < weight:
        return None
    return Rejection("slow_start", f"ramping up, weight {weight:.2f}")


def context(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    needed = ctx.features.prompt_tokens + (ctx.features.max_tokens or 1)
    limit = backend.config.max_seq_len
    if needed <= limit:
        return None
    return Rejection("context", f"prompt {ctx.features.prompt_tokens} + max_tokens exceeds {limit}")


def kv_ceiling(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    usage = kv_after(backend, 0)
    if usage is None:
        return Rejection("kv_ceiling", "KV-cache usage unknown (no usage metric scraped)")
    ceiling = ctx.policy.kv_hard_ceiling
    if usage < ceiling:
        return None
    detail = f"usage {usage:.2f} >= ceiling {ceiling:.2f}"
    return Rejection("kv_ceiling", detail, kv_pressure=True, saturated=True)


def kv_pressure(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    predicted = kv_after(backend, request_kv_tokens(ctx.features, ctx.policy))
    if predicted is None or predicted <= ctx.policy.kv_pressure_threshold:
        return None
    limit = ctx.policy.kv_pressure_threshold
    detail = f"predicted usage {predicted:.2f} > threshold {limit:.2f}"
    return Rejection("kv_pressure", detail, kv_pressure=True, saturated=True)


def waiting(backend: BackendState, ctx: FilterContext, *, limit: int) -> Rejection | None:
    """Hard, opt-in (``{name: waiting, parameters: {limit: N}}``): vLLM's own waiting queue
    (``vllm:num_requests_waiting``) is, or will be once what this gateway sent since the scrape
    arrives, at ``limit`` or more: the backend is saturated. Requests sent since the scrape
    join the waiting queue once the running slots (``capacity``, vLLM's ``max_num_seqs``) are
    full, so one scrape showing room does not release a whole queue onto one backend. Unknown
    (not scraped): admitted, the other filters judge."""
    metrics = backend.metrics
    if metrics is None or metrics.num_waiting is None:
        return None
    running = metrics.num_running or 0.0
    overflow = max(0.0, running + backend.pending_requests - backend.config.capacity)
    expected = metrics.num_waiting + overflow
    if expected < limit:
        return None
    detail = f"{expected:.0f} requests waiting (scraped {metrics.num_waiting:.0f}) >= limit {limit}"
    return Rejection("waiting", detail, saturated=True)


def quality(backend: BackendState, ctx: FilterContext) -> Rejection | None:
    if ctx.matrix is None:
        return None
    variant, task = backend.variant_id, ctx.features.task
    profile = ctx.matrix.variants.get(variant)  # one lookup for stable() and quality()
    measured = None if profile is None else profile.tasks.get(task)
    if measured is None:
        return None
    if measured.stable is False:
        return Rejection("quality", f"variant {variant} is unstable for {task}")
    score = measured.quality
    if score is not None and score < ctx.quality_floor:
        return Rejection(
            "quality", f"{task} quality {score:.2f} below floor {ctx.quality_floor:.2f}"
        )
    return None


PASSIVE_FILTERS: frozenset[Filter] = frozenset({ejection, backpressure, recent_failure, slow_start})
"""Filters that admit every backend whose passive state is
:data:`~quantroute.core.model.SERVING`: ``decide`` skips them for such a backend."""

REGISTRY: dict[str, Filter] = {
    "context": context,
    "kv_ceiling": kv_ceiling,
    "kv_pressure": kv_pressure,
    "quality": quality,
}
