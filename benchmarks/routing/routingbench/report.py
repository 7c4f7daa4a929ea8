"""Results out: JSON, a Markdown table with the target check, two plots, and the README block."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from routingbench.analysis import PolicyStats

START = "<!-- routing-results:start -->"
END = "<!-- routing-results:end -->"


def secs(value: float | None) -> str:
    if value is None:
        return "–"
    return (
        f"{value * 1000:.0f} ms"
        if value < 1.0
        else f"{value:.2f} s"
        if value < 10
        else f"{value:.1f} s"
    )


def money(value: float | None) -> str:
    return "–" if value is None else f"${value:.2f}" if value >= 0.1 else f"${value:.3f}"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


HEADER = (
    "| policy | served | rejected (servable) | failed | TTFT p50 | p95 | p99 | p99 ≤8k | e2e p99 "
    "| out tok/s | preempt. | GPUs paid | $/1M out | $/1M profiled | meets floor | quality vs 70B |\n"
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"
)


def table(stats: Sequence[PolicyStats]) -> str:
    lines = [HEADER]
    for s in stats:
        paid = "+".join(_short(b) for b in s.backends_used) or "–"
        unserved = s.rejected + s.failed
        lines.append(
            f"| {s.label} | {s.served} | {s.rejected} ({s.unserved_servable if unserved else 0}) "
            f"| {s.failed} | {secs(s.ttft_p50)} | {secs(s.ttft_p95)} | {secs(s.ttft_p99)} "
            f"| {secs(s.ttft_p99_common)} | {secs(s.e2e_p99)} | {s.tokens_per_s:.0f} "
            f"| {s.preemptions} | {paid} | {money(s.cost_fixed)} | {money(s.cost_profiled)} "
            f"| {pct(s.meets_floor)} | {pct(s.quality_vs_70b)} |"
        )
    return "\n".join(lines)


def _short(backend: str) -> str:
    return {
        "llama3-8b-awq": "8B-AWQ",
        "qwen25-7b-gptq": "Qwen-GPTQ",
        "llama3-70b-awq": "70B",
        "llama3-8b-fp16": "8B-FP16",
    }.get(backend, backend)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


Check = tuple[str, bool | None]
CANDIDATES = ("quantroute", "quantroute_tuned")


def _vs(a: float | None, b: float | None, fmt: str, ok: bool | None) -> Check:
    r = _ratio(a, b)
    text = "–" if r is None else f"{fmt.format(a)} (×{r:.2f})"
    return text, ok


def _checks(q: PolicyStats, st: PolicyStats | None, ref: PolicyStats | None) -> list[Check]:
    """One policy against issue 7's targets, in the order of TARGETS."""
    out: list[Check] = []
    for field in ("ttft_p99", "ttft_p99_common"):
        a, b = getattr(q, field), getattr(st, field) if st else None
        r = _ratio(a, b)
        out.append(
            ("–" if r is None else f"{secs(a)} (×{r:.2f})", None if r is None else r <= 1 / 6)
        )
    for field in ("cost_fixed", "cost_profiled"):
        a, b = getattr(q, field), getattr(ref, field) if ref else None
        r = _ratio(a, b)
        out.append(
            ("–" if r is None else f"{money(a)} (×{r:.2f})", None if r is None else r <= 0.25)
        )
    qv = q.quality_vs_70b
    out.append((pct(qv), None if qv is None else qv >= 0.98))
    r = _ratio(q.meets_floor, ref.meets_floor if ref else None)
    out.append(
        ("–" if r is None else f"{pct(q.meets_floor)} (×{r:.3f})", None if r is None else r >= 0.98)
    )
    out.append((str(q.preemptions), q.preemptions == 0))
    out.append((str(q.unserved_servable), q.unserved_servable == 0))
    return out


TARGETS = (
    "p99 TTFT ≤ 1/6 of static tier's",
    "same, requests every backend fits (≤8k)",
    "GPU cost per 1M ≤ 1/4 of all-70B (fixed fleet)",
    "same, profiled (right-sized pools)",
    "quality ≥ 98% of all-70B (expected, true profile)",
    "same, share meeting the floor",
    "zero preemptions",
    "no rejected request the fleet could have served",
)


def targets_md(by_key: Mapping[str, PolicyStats]) -> str:
    st, ref = by_key.get("static_tier"), by_key.get("all_70b")
    shown = [by_key[k] for k in CANDIDATES if k in by_key]
    if not shown:
        return ""
    mark = {True: "✓", False: "✗", None: "n/a"}
    refs = (
        f"static tier {secs(st.ttft_p99) if st else '–'} / {secs(st.ttft_p99_common) if st else '–'}; "
        f"all 70B {money(ref.cost_fixed) if ref else '–'} / {money(ref.cost_profiled) if ref else '–'}"
    )
    head = "| target (reference: " + refs + ") | " + " | ".join(s.label for s in shown) + " |"
    lines = [head, "|---|" + "---|" * len(shown)]
    checks = [_checks(s, st, ref) for s in shown]
    for i, name in enumerate(TARGETS):
        cells = " | ".join(f"{c[i][0]} {mark[c[i][1]]}" for c in checks)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def ttft_cdf(runs: Mapping[str, list[float]], labels: Mapping[str, str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, values in runs.items():
        if not values:
            continue
        xs = sorted(values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=labels[key], linewidth=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (simulated seconds, log scale)")
    ax.set_ylabel("share of served requests")
    ax.set_title("TTFT CDF per policy (same trace, fresh simulated fleet each)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_quality(stats: Sequence[PolicyStats], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for s in stats:
        if s.cost_fixed is None or s.quality_vs_70b is None:
            continue
        ax.scatter([s.cost_fixed], [100 * s.quality_vs_70b], s=40)
        ax.annotate(
            s.label,
            (s.cost_fixed, 100 * s.quality_vs_70b),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axhline(98, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("GPU cost per 1M output tokens, fixed fleet (USD)")
    ax.set_ylabel("expected quality vs all-70B (%)")
    ax.set_title("cost against quality")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, stats: Sequence[PolicyStats], context: Mapping[str, Any]) -> None:
    body = {"context": context, "policies": [asdict(s) for s in stats]}
    path.write_text(json.dumps(body, indent=1, default=str) + "\n", encoding="utf-8")


def replace_block(readme: Path, block: str) -> bool:
    """Replace only the text between the routing-results markers; False when they are missing."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(START)] + "\n" + block.strip() + "\n" + text[end:]
    readme.write_text(new, encoding="utf-8")
    return True


def finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _context_md(context: Mapping[str, Any]) -> str:
    t = context["trace_summary"]
    info = context["trace"]
    shape = (
        f"{t['requests']} requests over {t['duration_s']} s (mean {t['mean_rate_per_s']}/s"
        + (
            f", Poisson with {info['burst_factor']}× bursts of {info['burst_len_s']} s about every "
            f"{info['burst_every_s']} s, seed {info['seed']}"
            if info.get("source") == "generated"
            else ""
        )
        + f"); tasks {t['tasks']}; {t['premium']} premium; prompt tokens median {t['prompt_tokens_p50']}, "
        f"mean {t['prompt_tokens_mean']}, {t['prompts_over_6k']} over 6k "
        f"({t['too_long_for_8k_backends']} too long for the 8k backends); mean output {t['output_tokens_mean']} tokens."
    )
    return (
        f"Trace: {shape} Time scale {context['time_scale']:g} (TTFT and latencies are converted "
        f"to simulated seconds); quality floor {context['quality_floor']:g}; task type "
        f"{'sent as x-quantroute-task' if context['task_header'] else 'inferred by the gateway from the prompt text'}; "
        f"matrix `{context['matrix']}`."
    )


def _fidelity_md(stats: Sequence[PolicyStats]) -> str:
    rows = [
        "| policy | max sim lag | dispatch lag p99 | client − backend mean TTFT | CPU fleet / gateway | wall |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for s in stats:
        cpu = "/".join(
            "–" if v is None else f"{v:.0f} s"
            for v in (s.cpu_s.get("fleet"), s.cpu_s.get("gateway"))
        )
        rows.append(
            f"| {s.label} | {secs(s.max_fleet_lag_s)} | {secs(s.dispatch_lag_p99_s)} "
            f"| {secs(s.overhead_s)} | {cpu} | {s.wall_s:.0f} s |"
        )
    return "\n".join(rows)


def markdown(
    stats: Sequence[PolicyStats], context: Mapping[str, Any], images: str, doc: str
) -> str:
    by_key = {s.key: s for s in stats}
    parts = [
        "Routing policies on the simulated fleet (`python benchmarks/routing/run.py`, "
        f"{context['wall_s']:.0f} s wall). {_context_md(context)}",
        table(stats),
        "Against issue 7's targets:",
        targets_md(by_key),
        f"![TTFT CDF per policy]({images}ttft_cdf.png) ![cost against quality]({images}cost_quality.png)",
        "Simulator fidelity per run (lag = how far an engine's clock fell behind wall × scale; "
        "the client − backend TTFT gap is the gateway, the client and lag, in simulated seconds):",
        _fidelity_md(stats),
        f"Definitions, the analysis of where targets are missed and the proposals: [{doc}]({doc}).",
    ]
    return "\n\n".join(parts)


def _doc_link(out: Path) -> str:
    doc = Path(__file__).resolve().parent.parent / "README.md"
    return Path(os.path.relpath(doc, out.resolve())).as_posix()


def write(
    out: Path,
    stats: Sequence[PolicyStats],
    ttfts: Mapping[str, list[float]],
    context: Mapping[str, Any],
    *,
    readme: Path | None,
) -> None:
    labels = {s.key: s.label for s in stats}
    ttft_cdf(ttfts, labels, out / "ttft_cdf.png")
    cost_quality(stats, out / "cost_quality.png")
    write_json(out / "results.json", stats, context)
    (out / "results.md").write_text(
        markdown(stats, context, "", _doc_link(out)) + "\n", encoding="utf-8"
    )
    if readme is not None:
        rel = out.relative_to(readme.parent).as_posix() + "/"
        if not replace_block(readme, markdown(stats, context, rel, "benchmarks/routing/README.md")):
            print(f"warning: markers not found in {readme}; README left alone")
