"""Per-policy figures from a :class:`~routingbench.bench.PolicyRun`, all in simulated seconds.

Definitions (also printed beside the results):

* TTFT: from the moment the request was due (its trace time) to the first SSE data line the
  client read, wall seconds x time scale. End-to-end: due to the last byte.
* served: HTTP 200 and a complete stream. rejected: the gateway answered 4xx/503. failed: a 5xx
  after routing, a broken stream, or no answer within the timeout.
* servable: the request fits some backend of the fleet (prompt + max_tokens within its context,
  the gateway's own rule), so the fleet could have served it.
* GPU cost per 1M output tokens (fixed fleet): every backend that served at least one request is
  paid at its hourly price for the whole run (first arrival to last completion), divided by the
  output tokens served. A second figure prices each backend's tokens at the cost per 1M the
  profiler measured at its best concurrency (what right-sized pools would cost).
* quality: the simulator's true probability that the serving variant answers that task type
  correctly (``quantroute/sim/profiles.yaml``). "meets floor" is the share of all requests served
  by a variant whose true quality for the task is at least the quality floor; "vs 70B" is the
  summed quality of the served requests over what the 70B would have scored on the same requests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from quantroute.core.matrix import CapabilityMatrix
from quantroute.sim.profiles import load_profiles
from routingbench import policies
from routingbench.bench import PolicyRun
from routingbench.replay import Outcome
from routingbench.workload import TraceRequest

Row = Mapping[str, object]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class PolicyStats:
    key: str
    label: str
    requests: int
    served: int
    rejected: int
    failed: int
    unserved_servable: int
    ttft_p50: float | None
    ttft_p95: float | None
    ttft_p99: float | None
    ttft_p99_common: float | None
    e2e_p99: float | None
    output_tokens: int
    makespan_s: float
    tokens_per_s: float
    preemptions: int
    backends_used: tuple[str, ...]
    cost_fixed: float | None
    cost_profiled: float | None
    meets_floor: float
    quality_vs_70b: float | None
    traffic: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    max_fleet_lag_s: float = 0.0
    dispatch_lag_p99_s: float = 0.0
    overhead_s: float | None = None
    cpu_s: dict[str, float | None] = field(default_factory=dict)
    wall_s: float = 0.0


def true_quality() -> dict[str, dict[str, float]]:
    """Backend id -> task -> the simulator's true quality (default fleet: id == profile)."""
    book = load_profiles()
    return {b: book.variant(b).quality.model_dump() for b in policies.ALL}


def fleet_rows() -> dict[str, Row]:
    return {str(r["id"]): r for r in policies.demo_backends()}


def servable(request: TraceRequest, fleet: Mapping[str, Row]) -> bool:
    need = request.prompt_tokens + request.max_tokens
    return any(need <= int(str(r["max_seq_len"])) for r in fleet.values())


def _common(request: TraceRequest, fleet: Mapping[str, Row]) -> bool:
    """Fits every backend (so every policy could serve it): the like-for-like TTFT subset."""
    need = request.prompt_tokens + request.max_tokens
    return all(need <= int(str(r["max_seq_len"])) for r in fleet.values())


def _status_class(o: Outcome) -> str:
    if o.ok:
        return "served"
    if o.status in (400, 404, 413, 429, 503):
        return "rejected"
    return "failed"


def _costs(
    run: PolicyRun,
    served: list[tuple[TraceRequest, Outcome]],
    makespan: float,
    matrix: CapabilityMatrix | None,
) -> tuple[tuple[str, ...], float | None, float | None]:
    fleet = fleet_rows()
    tokens = Counter[str]()
    for _, o in served:
        tokens[o.backend or "?"] += o.output_tokens
    used = tuple(sorted(b for b in tokens if b in fleet))
    total = sum(tokens.values())
    if total == 0:
        return used, None, None
    price = sum(float(str(fleet[b]["gpu_cost_per_hour"])) for b in used)
    fixed = price * makespan / 3600.0 / (total / 1e6)
    profiled = None
    if matrix is not None:
        costs = {b: matrix.cost_per_1m(b) for b in used}
        if all(c is not None for c in costs.values()):
            profiled = sum(tokens[b] * (costs[b] or 0.0) for b in used) / total
    return used, fixed, profiled


def _quality(
    served: list[tuple[TraceRequest, Outcome]], n: int, floor: float
) -> tuple[float, float | None]:
    truth = true_quality()
    meets = sum(1 for r, o in served if truth[o.backend or ""][r.task] >= floor)
    got = sum(truth[o.backend or ""][r.task] for r, o in served)
    ref = sum(truth[policies.SEVENTY_B][r.task] for r, _ in served)
    return meets / n, (got / ref if ref else None)


def _overhead(run: PolicyRun, served: list[tuple[TraceRequest, Outcome]]) -> float | None:
    """Mean client TTFT minus the backends' own mean TTFT (gateway, client and lag, simulated)."""
    count = sum(m["vllm:time_to_first_token_seconds_count"] for m in run.backend_metrics.values())
    if not served or not count:
        return None
    backend_mean = (
        sum(m["vllm:time_to_first_token_seconds_sum"] for m in run.backend_metrics.values()) / count
    )
    client_mean = sum(((o.first or 0.0) - o.due) for _, o in served) * run.time_scale / len(served)
    return client_mean - backend_mean


def summarise(
    run: PolicyRun,
    rows: Sequence[TraceRequest],
    *,
    quality_floor: float,
    matrix: CapabilityMatrix | None,
) -> PolicyStats:
    scale = run.time_scale
    pairs = list(zip(rows, run.outcomes, strict=True))
    served = [(r, o) for r, o in pairs if o.ok]
    classes = Counter(_status_class(o) for o in run.outcomes)
    fleet = fleet_rows()
    ttft = [((o.first or 0.0) - o.due) * scale for _, o in served]
    ttft_common = [((o.first or 0.0) - o.due) * scale for r, o in served if _common(r, fleet)]
    e2e = [((o.end or 0.0) - o.due) * scale for _, o in served]
    makespan = max((o.end or 0.0) for o in run.outcomes) * scale
    used, fixed, profiled = _costs(run, served, makespan, matrix)
    meets, vs70 = _quality(served, len(rows), quality_floor)
    out_tokens = sum(o.output_tokens for _, o in served)
    lag = [v.get("max_lag_s", 0.0) for v in run.fleet_lag.values()]
    return PolicyStats(
        key=run.spec.key,
        label=run.spec.label,
        requests=len(rows),
        served=classes["served"],
        rejected=classes["rejected"],
        failed=classes["failed"],
        unserved_servable=sum(1 for r, o in pairs if not o.ok and servable(r, fleet)),
        ttft_p50=percentile(ttft, 50),
        ttft_p95=percentile(ttft, 95),
        ttft_p99=percentile(ttft, 99),
        ttft_p99_common=percentile(ttft_common, 99),
        e2e_p99=percentile(e2e, 99),
        output_tokens=out_tokens,
        makespan_s=makespan,
        tokens_per_s=out_tokens / makespan if makespan else 0.0,
        preemptions=round(
            sum(m["vllm:num_preemptions_total"] for m in run.backend_metrics.values())
        ),
        backends_used=used,
        cost_fixed=fixed,
        cost_profiled=profiled,
        meets_floor=meets,
        quality_vs_70b=vs70,
        traffic=dict(Counter(o.backend or "-" for _, o in served)),
        errors=dict(Counter(o.error or "" for o in run.outcomes if not o.ok)),
        max_fleet_lag_s=max(lag, default=0.0),
        dispatch_lag_p99_s=(
            percentile([(o.sent - o.due) * scale for o in run.outcomes], 99) or 0.0
        ),
        overhead_s=_overhead(run, served),
        cpu_s=dict(run.cpu_s),
        wall_s=run.wall_s,
    )
