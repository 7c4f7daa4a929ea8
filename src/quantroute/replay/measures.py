"""What a replay measured, and the clairvoyant floor of a trace.

* **p99 TTFT**: over the interactive requests served (batch ones have their own column).
* **Cost per 1M output tokens**: each served request's output tokens priced at its variant's
  profiled cost per 1M (the matrix's ``cost_per_1m_output_tokens``: pools sized to the traffic
  each variant gets); without a matrix price, the fixed-fleet rule (every backend used is paid
  its ``gpu_cost_per_hour`` for the whole replay, over all output tokens).
* **Quality share**: requests served by a variant whose matrix quality for the task meets the
  group's floor, over *all* requests (a refused one does not meet it).
* **Floor** (:func:`floor_ttfts`): each request's TTFT alone on an otherwise idle fleet, on the
  fastest backend its group, its context and its quality floor allow (below the floor only when
  nothing meets it). No policy can beat it; a p99 within a small multiple of it is close to the
  best possible.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from quantroute.config import BackendConfig, GatewayConfig, GroupConfig
from quantroute.core.matrix import CapabilityMatrix
from quantroute.core.model import LatencyClass
from quantroute.replay.fleet import SimulatedBackend, build_fleet
from quantroute.replay.simulate import ReplayResult, RequestResult
from quantroute.replay.trace import TraceRow
from quantroute.sim.engine import EngineRequest
from quantroute.sim.roofline import ScheduledChunk


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    requests: int
    served: int
    refused: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    """Interactive requests."""
    batch_ttft_p99_s: float | None
    cost_per_1m: float | None
    quality_share: float | None
    preemptions: int
    output_tokens: int
    queued: int = 0
    """Requests that waited in the gateway's flow-control queue (served or not)."""
    downgraded: int = 0
    """Interactive requests sent below the floor because the group was saturated."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group(config: GatewayConfig, model: str) -> GroupConfig | None:
    return next((g for g in config.groups if g.name == model), None)


def meets_floor(
    r: RequestResult, config: GatewayConfig, matrix: CapabilityMatrix | None
) -> bool | None:
    if not r.ok or r.variant is None:
        return False
    group = _group(config, r.model)
    floor = group.quality_floor if group is not None else 0.0
    if floor <= 0.0:
        return True
    if matrix is None:
        return None
    quality = matrix.quality(r.variant, r.row.task)
    return quality is not None and quality >= floor


def _cost(run: ReplayResult, matrix: CapabilityMatrix | None) -> float | None:
    served = [(r, r.variant) for r in run.results if r.ok and r.variant is not None]
    tokens = sum(r.output_tokens for r, _ in served)
    if not tokens:
        return None
    prices = {v: matrix.cost_per_1m(v) if matrix else None for _, v in served}
    if all(p is not None for p in prices.values()):
        return sum((prices[v] or 0.0) * r.output_tokens for r, v in served) / tokens
    used = {r.backend for r, _ in served}
    hourly = sum(run.gpu_cost_per_hour.get(b or "", 0.0) for b in used)
    return hourly * run.duration_s / 3600.0 / tokens * 1e6 if hourly else None


def summarise(run: ReplayResult, config: GatewayConfig, matrix: CapabilityMatrix | None) -> Summary:
    results = run.results
    served = [r for r in results if r.ok]
    inter = [
        r.ttft
        for r in served
        if r.ttft is not None and r.row.latency_class is LatencyClass.INTERACTIVE
    ]
    batch = [
        r.ttft for r in served if r.ttft is not None and r.row.latency_class is LatencyClass.BATCH
    ]
    meets = [meets_floor(r, config, matrix) for r in results]
    share = (
        None
        if any(m is None for m in meets) or not results
        else sum(bool(m) for m in meets) / len(results)
    )
    return Summary(
        requests=len(results),
        served=len(served),
        refused=sum(r.status != 200 for r in results),
        ttft_p50_s=percentile(inter, 50),
        ttft_p99_s=percentile(inter, 99),
        batch_ttft_p99_s=percentile(batch, 99),
        cost_per_1m=_cost(run, matrix),
        quality_share=share,
        preemptions=run.preemptions,
        output_tokens=sum(r.output_tokens for r in served),
        queued=sum(r.queued_s is not None for r in results),
        downgraded=sum(r.downgraded for r in results),
    )


# -- the floor -----------------------------------------------------------------------------------
def _idle_ttft(
    backend: SimulatedBackend, prompt_tokens: int, cache: dict[tuple[str, int], float]
) -> float:
    key = (backend.id, prompt_tokens)
    if key not in cache:
        engine, now = backend.engine, 0.0
        request_id = f"floor{len(cache)}"
        engine.add_request(EngineRequest(request_id, prompt_tokens, max_tokens=2), now)
        first = None
        while first is None:
            out = engine.step(now)
            now = out.end
            first = next((t.time for t in out.tokens if t.request_id == request_id), None)
        engine.abort(request_id, now)
        cache[key] = first
    return cache[key]


def _allowed(
    row: TraceRow,
    model: str,
    config: GatewayConfig,
    matrix: CapabilityMatrix | None,
    backends: Mapping[str, BackendConfig],
) -> list[str]:
    group = _group(config, model)
    variants = group.variants if group is not None else None
    fits = [
        b.id
        for b in backends.values()
        if (variants is None and model in (b.id, b.served_model_name, b.variant_id))
        or (variants is not None and b.variant_id in variants)
        if row.prompt_tokens + row.max_tokens <= b.max_seq_len
    ]
    floor = group.quality_floor if group is not None else 0.0
    if floor <= 0.0 or matrix is None:
        return fits
    good = [b for b in fits if (matrix.quality(backends[b].variant_id, row.task) or 0.0) >= floor]
    return good or fits


def floor_ttfts(
    rows: Sequence[TraceRow],
    config: GatewayConfig,
    matrix: CapabilityMatrix | None,
    *,
    model_for: Callable[[TraceRow], str] | None = None,
    profiles: Mapping[str, str] | None = None,
) -> list[float | None]:
    """Per row: its TTFT alone on the best backend its floor allows (None: nothing fits)."""
    fleet = build_fleet(config, profiles=profiles)
    backends = {b.id: b for b in config.backends if b.id in fleet}
    cache: dict[tuple[str, int], float] = {}
    out: list[float | None] = []
    for row in rows:
        model = model_for(row) if model_for is not None else row.model
        ids = _allowed(row, model, config, matrix, backends)
        times = [_idle_ttft(fleet[b], row.prompt_tokens, cache) for b in ids]
        out.append(min(times) if times else None)
    return out


def floor_p99(floors: Sequence[float | None], rows: Sequence[TraceRow]) -> float | None:
    """p99 of the floor over the interactive rows (as :class:`Summary` reports TTFT)."""
    values = [
        f for f, r in zip(floors, rows, strict=True)
        if f is not None and r.latency_class is LatencyClass.INTERACTIVE
    ]  # fmt: skip
    return percentile(values, 99)


# -- the offline assignment bound ----------------------------------------------------------------
MAX_CLUSTER = 6
"""Requests forced onto one backend whose idle-fleet intervals overlap are bounded together, at
most this many at a time (every completion order of a cluster is tried: 6! = 720)."""


def _prefill_compute_s(backend: SimulatedBackend, prompt_tokens: int) -> float:
    """The pure compute time of a prompt's prefill on ``backend``'s simulated GPU: its FLOPs
    (dense layers and causal attention, the same however it is chunked or batched) over the
    GPU's effective FLOPs. Every engine step lasts at least its chunks' FLOPs over that rate
    (:mod:`quantroute.sim.roofline`: max(memory, compute) + host overhead), so prompts prefilled
    on one backend take at least the sum of these, in any schedule."""
    cost = backend.engine.config.cost
    return cost.flop_count([ScheduledChunk(0, prompt_tokens)]) / cost.flops


def _cluster_bounds(
    members: Sequence[tuple[float, float, float, bool]],
) -> list[list[tuple[float, bool]]]:
    """Per completion order of ``members`` (arrival, idle floor, compute s, interactive): each
    member's TTFT lower bound. A member finishes no earlier than its idle floor after its arrival,
    nor before every member finished up to it, those arrived at or after any ρ, were computed
    from ρ on: completion ≥ ρ + the sum of their compute times."""
    out = []
    for order in itertools.permutations(range(len(members))):
        bounds = []
        for j, m in enumerate(order):
            arrival, floor, _, interactive = members[m]
            done = arrival + floor
            prefix = [members[i] for i in order[: j + 1]]
            for rho in {p[0] for p in prefix}:
                done = max(done, rho + sum(p[2] for p in prefix if p[0] >= rho))
            bounds.append((done - arrival, interactive))
        out.append(bounds)
    return out


def assignment_floor_p99(
    rows: Sequence[TraceRow],
    config: GatewayConfig,
    matrix: CapabilityMatrix | None,
    floors: Sequence[float | None],
    *,
    model_for: Callable[[TraceRow], str] | None = None,
    profiles: Mapping[str, str] | None = None,
) -> float | None:
    """A lower bound on the interactive p99 TTFT of *any* assignment and order, knowing every
    arrival in advance (the floor's rules: the backends a request's group, context and quality
    floor allow; the simulated GPUs' roofline): the idle floor of each request, raised where
    requests that only one backend may serve overlap, since that backend's GPU must compute
    their prompts one FLOP after another. A policy chooses which of them waits; the bound takes,
    per cluster of overlapping ones, the completion order that is best for the p99. Clusters
    are bounded apart (a relaxation: a valid bound, maybe not the tightest)."""
    fleet = build_fleet(config, profiles=profiles)
    backends = {b.id: b for b in config.backends if b.id in fleet}
    inter_free: list[float] = []
    forced: dict[str, list[tuple[float, float, float, bool]]] = {}
    for row, floor in zip(rows, floors, strict=True):
        if floor is None:
            continue
        interactive = row.latency_class is LatencyClass.INTERACTIVE
        model = model_for(row) if model_for is not None else row.model
        allowed = _allowed(row, model, config, matrix, backends)
        if len(allowed) == 1:
            compute = _prefill_compute_s(fleet[allowed[0]], row.prompt_tokens)
            forced.setdefault(allowed[0], []).append((row.t, floor, compute, interactive))
        elif interactive:
            inter_free.append(floor)
    clusters: list[list[list[tuple[float, bool]]]] = []
    for members in forced.values():
        members.sort()
        group: list[tuple[float, float, float, bool]] = []
        for m in [*members, None]:
            if (
                m is not None
                and group
                and len(group) < MAX_CLUSTER
                and m[0] < max(g[0] + g[1] for g in group)
            ):
                group.append(m)
                continue
            if group:
                clusters.append(_cluster_bounds(group))
            group = [] if m is None else [m]
    n = len(inter_free) + sum(sum(i for _, i in c[0]) for c in clusters)
    if not n:
        return None
    allowed_above = n - max(1, math.ceil(0.99 * n))
    """p99 (nearest rank) ≤ T when at most this many interactive TTFTs exceed T."""
    values = sorted({*inter_free, *(b for c in clusters for o in c for b, i in o if i)})
    for t in values:
        above = sum(f > t for f in inter_free) + sum(
            min(sum(b > t for b, i in order if i) for order in c) for c in clusters
        )
        if above <= allowed_above:
            return t
    return values[-1]
