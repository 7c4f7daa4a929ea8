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
