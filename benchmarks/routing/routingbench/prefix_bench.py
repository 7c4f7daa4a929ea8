"""The prefix-routing comparison: policies, per-policy figures and the report.

Figures (simulated seconds):

* hit rate: the backends' own ``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total``
  summed over the fleet (tokens); "session hit rate": cached prompt tokens over prompt tokens of
  the conversation turns, from each response's ``usage.prompt_tokens_details.cached_tokens``.
* prefill GPU-s: simulated GPU seconds the engines spent on prefill chunks (each step's duration
  minus what its decode chunks alone would take), summed over the fleet.
* session prefill tokens: prompt tokens the backends computed (not read from cache) for the
  conversation turns: the prefill work of session traffic.
* TTFT: as in the main benchmark, due time to the first SSE data line; a conversation turn is due
  when its think time after the previous answer ended.
* busiest share: the largest share of requests one backend served (0.25 is even).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from routingbench.analysis import percentile
from routingbench.bench import PolicyRun
from routingbench.policies import PolicySpec
from routingbench.report import secs
from routingbench.sessions import kind_of
from routingbench.workload import TraceRequest

VARIANT = "llama3-8b-awq"
REPLICAS = ("r1", "r2", "r3", "r4")
BACKENDS = tuple(
    {
        "id": r,
        "served_model_name": VARIANT,
        "variant": VARIANT,
        "quantization": "awq",
        "max_seq_len": 8192,
        "capacity": 256,
        "gpu": "L40S",
        "gpu_cost_per_hour": 1.20,
    }
    for r in REPLICAS
)
GROUPS = (("auto", (VARIANT,)),)
START = "<!-- prefix-results:start -->"
END = "<!-- prefix-results:end -->"


def _weights(**w: float) -> dict[str, dict[str, float]]:
    full = {"headroom": 0.0, "latency": 0.0, "cost": 0.0, "least_loaded": 0.0, **w}
    return {"interactive": full, "batch": full}


DEFAULT_SCORERS: dict[str, Any] = {
    "scorers": {
        "interactive": [
            {"name": "headroom", "weight": 0.4},
            {"name": "latency", "weight": 0.45},
            {"name": "cost", "weight": 0.15},
        ],
        "batch": [
            {"name": "headroom", "weight": 0.35},
            {"name": "latency", "weight": 0.1},
            {"name": "cost", "weight": 0.55},
        ],
    }
}
"""quantroute's scorers without any prefix scorer (spelt out: independent of the defaults)."""


def specs(prefix_policy: dict[str, Any], cache_aware_policy: dict[str, Any]) -> list[PolicySpec]:
    """The five compared policies; the two prefix-aware ones' policy sections are given."""
    context_only = {"filters": ["context"]}

    def spec(key: str, label: str, policy: dict[str, Any], note: str = "") -> PolicySpec:
        return PolicySpec(key, label, GROUPS, policy, matrix=True, note=note, backends=BACKENDS)

    return [
        spec("round_robin", "round robin", {**context_only, "picker": "round_robin"}),
        spec(
            "least_loaded",
            "least loaded",
            {**context_only, "weights": _weights(least_loaded=1.0), "tie_tolerance": 0.0},
        ),
        spec("quantroute", "quantroute w/o prefix scorer", DEFAULT_SCORERS, "filters and scorers"),
        spec("quantroute_prefix", "quantroute + prefix scorer", prefix_policy),
        spec("cache_aware", "cache-aware (Rust routers' policy)", cache_aware_policy),
    ]


@dataclass
class PrefixStats:
    key: str
    label: str
    requests: int
    served: int
    failed: int
    hit_rate: float | None
    session_hit_rate: float | None
    prefill_gpu_s: float
    session_prefill_tokens: int
    ttft_p50: float | None
    ttft_p99: float | None
    session_ttft_p50: float | None
    session_ttft_p99: float | None
    busiest_share: float
    preemptions: int
    max_lag_s: float
    dispatch_lag_p99_s: float
    wall_s: float
    expected_hit_rate: float | None = None
    withdrawn: int = 0
    """Decisions in which the balance guard withdrew a backend's prefix bonus."""
    traffic: dict[str, int] | None = None


def summarise(run: PolicyRun, rows: Sequence[TraceRequest]) -> PrefixStats:
    scale = run.time_scale
    pairs = list(zip(rows, run.outcomes, strict=True))
    served = [(r, o) for r, o in pairs if o.ok]
    sessions = [(r, o) for r, o in served if kind_of(r) == "session"]
    ttft = [((o.first or 0.0) - o.due) * scale for _, o in served]
    s_ttft = [((o.first or 0.0) - o.due) * scale for _, o in sessions]
    metrics = run.backend_metrics.values()
    queries = sum(m["vllm:prefix_cache_queries_total"] for m in metrics)
    hits = sum(m["vllm:prefix_cache_hits_total"] for m in metrics)
    s_prompt = sum(o.prompt_tokens for _, o in sessions)
    s_cached = sum(o.cached_tokens for _, o in sessions)
    traffic = Counter(o.backend or "-" for _, o in served)
    lag = [v.get("max_lag_s", 0.0) for v in run.fleet_lag.values()]
    sent = run.gateway_metrics.get("quantroute_prefix_prompt_tokens_total", 0.0)
    expected = run.gateway_metrics.get("quantroute_prefix_expected_hit_tokens_total", 0.0)
    return PrefixStats(
        key=run.spec.key,
        label=run.spec.label,
        requests=len(rows),
        served=len(served),
        failed=len(rows) - len(served),
        hit_rate=hits / queries if queries else None,
        session_hit_rate=s_cached / s_prompt if s_prompt else None,
        prefill_gpu_s=sum(v.get("prefill_gpu_s", 0.0) for v in run.fleet_lag.values()),
        session_prefill_tokens=s_prompt - s_cached,
        ttft_p50=percentile(ttft, 50),
        ttft_p99=percentile(ttft, 99),
        session_ttft_p50=percentile(s_ttft, 50),
        session_ttft_p99=percentile(s_ttft, 99),
        busiest_share=max(traffic.values()) / len(served) if served else 0.0,
        preemptions=round(sum(m["vllm:num_preemptions_total"] for m in metrics)),
        max_lag_s=max(lag, default=0.0),
        dispatch_lag_p99_s=percentile([(o.sent - o.due) * scale for o in run.outcomes], 99) or 0.0,
        wall_s=run.wall_s,
        expected_hit_rate=expected / sent if sent else None,
        withdrawn=round(run.gateway_metrics.get("quantroute_prefix_affinity_withdrawn_total", 0)),
        traffic=dict(sorted(traffic.items())),
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def table(stats: Sequence[PrefixStats]) -> str:
    lines = [
        "| policy | served | hit rate (backends) | expected (gateway) | session hit rate "
        "| prefill GPU-s | session prefill tokens | TTFT p50 | p99 | session p50 | session p99 "
        "| busiest backend | preempt. |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in stats:
        lines.append(
            f"| {s.label} | {s.served}/{s.requests} | {_pct(s.hit_rate)} "
            f"| {_pct(s.expected_hit_rate)} | {_pct(s.session_hit_rate)} "
            f"| {s.prefill_gpu_s:.1f} | {s.session_prefill_tokens:,} | {secs(s.ttft_p50)} "
            f"| {secs(s.ttft_p99)} | {secs(s.session_ttft_p50)} | {secs(s.session_ttft_p99)} "
            f"| {_pct(s.busiest_share)} | {s.preemptions} |"
        )
    return "\n".join(lines)


def fidelity(stats: Sequence[PrefixStats]) -> str:
    lines = [
        "| policy | max sim lag | dispatch lag p99 | wall |",
        "|---|--:|--:|--:|",
    ]
    for s in stats:
        lines.append(
            f"| {s.label} | {secs(s.max_lag_s)} | {secs(s.dispatch_lag_p99_s)} | {s.wall_s:.0f} s |"
        )
    return "\n".join(lines)


def targets(stats: Sequence[PrefixStats]) -> str:
    by = {s.key: s for s in stats}
    lines: list[str] = []
    prefix, least, plain = by.get("quantroute_prefix"), by.get("least_loaded"), by.get("quantroute")
    if prefix and least and least.session_prefill_tokens:
        ratio = prefix.session_prefill_tokens / least.session_prefill_tokens
        mark = "✓" if ratio <= 0.5 else "✗"
        lines.append(
            f"* session prefill work with the prefix scorer: ×{ratio:.2f} of least loaded's "
            f"(target ≤ ×0.50) {mark}"
        )
    if prefix and plain and prefix.ttft_p99 is not None and plain.ttft_p99 is not None:
        mark = "✓" if prefix.ttft_p99 <= plain.ttft_p99 else "✗"
        lines.append(
            f"* p99 TTFT with the prefix scorer {secs(prefix.ttft_p99)} vs without "
            f"{secs(plain.ttft_p99)} (target: no worse) {mark}"
        )
    return "\n".join(lines)


def write(out: Path, stats: Sequence[PrefixStats], context: dict[str, Any]) -> str:
    """results.json and results.md in ``out``; returns the Markdown block."""
    import json

    (out / "results.json").write_text(
        json.dumps({"context": context, "policies": [asdict(s) for s in stats]}, indent=1) + "\n",
        encoding="utf-8",
    )
    summary = context["trace_summary"]
    block = "\n\n".join(
        [
            f"Prefix-aware routing on four replicas of `{VARIANT}` (simulated, "
            f"`python benchmarks/routing/prefix_run.py`, {context['wall_s']:.0f} s wall). Trace: "
            f"{summary['requests']} requests over {summary['duration_s']} simulated s "
            f"({summary['by_kind']['session']} conversation turns in {summary['sessions']} "
            f"sessions, {summary['by_kind']['document']} questions on shared documents, "
            f"{summary['by_kind']['oneshot']} one-shot requests); mean prompt "
            f"{summary['prompt_tokens_mean']} tokens; time scale {context['time_scale']}.",
            table(stats),
            targets(stats),
            "Simulator fidelity (lag: how far an engine's clock fell behind wall × scale):",
            fidelity(stats),
        ]
    )
    (out / "results.md").write_text(block + "\n", encoding="utf-8")
    return block


def update_readme(readme: Path, block: str) -> None:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{block}\n{END}{tail}", encoding="utf-8")
