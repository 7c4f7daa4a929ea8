"""Markdown for the overhead benchmark, from the results dict ``run.py`` writes (results.json).

    python benchmarks/overhead/report.py benchmarks/overhead/results.json   # re-render

Every figure is the median over repetitions; ratios are medians of per-repetition ratios
(gateway and direct measured back to back, so slow drifts in background load cancel).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import loadgen
import procs

Cell = dict[str, Any]
ANALYSIS = procs.HERE / "analysis.md"
TARGETS = {
    "added_p50_ms": 1.0,
    "nonstream_c32_rps": 1500.0,
    "stream_c128_rps": 850.0,
    "rss_mb": 100.0,
}


def progress_line(c: Cell) -> str:
    where = f"rep {c['rep']}" if "rep" in c else f"pair {c['pair']}"
    return (
        f"{where} {c['mode']:>10} c={c['concurrency']:<3} {c['target']:>7}: "
        f"{c['rps']:8.0f} req/s  p50 {c['lat_p50_ms']:7.2f} ms  p99 {c['lat_p99_ms']:7.2f} ms  "
        f"ttfb p50 {c['ttfb_p50_ms']:6.2f} ms  err {c['errors']}  gw cpu {c['gateway_cpu_pct']:5.1f}%  "
        f"foreign {c['foreign_pct'].get('cpu0', 0):4.0f}/{c['foreign_pct'].get('cpu1', 0):4.0f}%"
    )


def med(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _select(cells: list[Cell], mode: str, c: int, target: str) -> list[Cell]:
    return [x for x in cells if (x["mode"], x["concurrency"], x["target"]) == (mode, c, target)]


def _pairs(
    cells: list[Cell], mode: str, c: int, name: str = "gateway", base: str = "direct"
) -> list[tuple[Cell, Cell]]:
    """(base, name) cells of the same repetition: measured back to back."""
    lhs = {x["rep"]: x for x in _select(cells, mode, c, base)}
    rhs = {x["rep"]: x for x in _select(cells, mode, c, name)}
    return [(lhs[r], rhs[r]) for r in sorted(lhs) if r in rhs]


def _names(cells: list[Cell]) -> list[str]:
    """Gateway targets in the run: ``gateway``, then ``candidate``, ``access`` and ``trace-...``
    if present."""
    seen = dict.fromkeys(x["target"] for x in cells if x["target"] != "direct")
    order = ("gateway", "candidate", "access", "bare", "nginx", "vllm-router")
    return sorted(
        seen, key=lambda n: (order.index(n) if n in order else len(order), _trace_ratio(n))
    )


def _trace_ratio(name: str) -> float:
    return float(name[6:-1]) if name.startswith("trace-") else -1.0


def _ratio(pairs: list[tuple[Cell, Cell]], key: str) -> float:
    return med(g[key] / d[key] if d[key] else math.nan for d, g in pairs)


def _added(pairs: list[tuple[Cell, Cell]], key: str) -> float:
    return med(g[key] - d[key] for d, g in pairs)


def _levels(cells: list[Cell]) -> list[tuple[str, int]]:
    seen: dict[tuple[str, int], None] = {}
    for x in cells:
        seen[x["mode"], x["concurrency"]] = None
    return list(seen)


def _rps_cell(rows: list[Cell]) -> str:
    values = [x["rps"] for x in rows]
    text = fmt(med(values), 0)
    return text if len(values) < 2 else f"{text} ({min(values):,.0f}–{max(values):,.0f})"


def _target_row(rows: list[Cell], name: str) -> str:
    m: Callable[[str], float] = lambda k: med(x[k] for x in rows)  # noqa: E731
    gw = name != "direct"
    fc = med(x["foreign_pct"].get("cpu1", 0.0) for x in rows)
    f0 = med(x["foreign_pct"].get("cpu0", 0.0) for x in rows)
    return (
        f"| {name} | {_rps_cell(rows)} | {fmt(m('lat_p50_ms'))} | {fmt(m('lat_p99_ms'))} | "
        f"{fmt(m('ttfb_p50_ms'))} | {fmt(m('ttfb_p99_ms'))} | {sum(x['errors'] for x in rows)} | "
        f"{fmt(m('gateway_cpu_pct'), 0) if gw else '–'} | "
        f"{fmt(m('gateway_cpu_us_per_req'), 0) if gw else '–'} | "
        f"{fmt(m('rss_peak_kb') / 1024, 1) if gw else '–'} | {f0:.0f} / {fc:.0f} |"
    )


def _ratio_row(pairs: list[tuple[Cell, Cell]], title: str) -> str:
    def both(key: str) -> str:
        added = _added(pairs, key)
        return f"×{fmt(_ratio(pairs, key))} ({'+' if added >= 0 else ''}{fmt(added)} ms)"

    cpu = "| | |"
    if title.endswith("/gateway"):
        cpu = f"| | ×{fmt(_ratio(pairs, 'gateway_cpu_us_per_req'))} |"
    return (
        f"| **{title}** | **×{fmt(_ratio(pairs, 'rps'))}** | {both('lat_p50_ms')} | "
        f"{both('lat_p99_ms')} | {both('ttfb_p50_ms')} | {both('ttfb_p99_ms')} | {cpu} | |"
    )


def main_table(cells: list[Cell]) -> list[str]:
    names = _names(cells)
    out = []
    for mode, c in _levels(cells):
        out += [
            f"**{mode}, concurrency {c}**",
            "",
            "| target | req/s (min–max) | p50 ms | p99 ms | TTFB p50 ms | TTFB p99 ms | errors "
            "| gw CPU % | gw CPU µs/req | gw RSS peak MiB | foreign CPU % core0 / core1 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(_target_row(_select(cells, mode, c, n), n) for n in ["direct", *names]),
            *(_ratio_row(_pairs(cells, mode, c, n), f"{n}/direct") for n in names),
        ]
        for other in names[1:]:
            if other in BASELINES:
                continue
            pairs = _pairs(cells, mode, c, other, "gateway")
            out.append(_ratio_row(pairs, f"{other}/gateway"))
        if "bare" in names:
            for other in (n for n in names if n not in BASELINES):
                out.append(_ratio_row(_pairs(cells, mode, c, other, "bare"), f"{other}/bare"))
        out.append("")
    return out


def tracing_table(result: dict[str, Any]) -> list[str]:
    """Tracing on (1%, 100%...) against the same gateway with tracing off, same run."""
    cells: list[Cell] = result["cells"]
    traced = [n for n in _names(cells) if n.startswith("trace-")]
    if not traced:
        return []
    head = " | ".join(traced)
    out = [
        "## Tracing cost (same run, ratio to the gateway with tracing off)",
        "",
        f"| load | {head} |",
        "|---|" + "---:|" * len(traced),
    ]
    for mode, c in _levels(cells):
        row = []
        for name in traced:
            pairs = _pairs(cells, mode, c, name, "gateway")
            row.append(
                f"req/s ×{fmt(_ratio(pairs, 'rps'))}, CPU/req "
                f"×{fmt(_ratio(pairs, 'gateway_cpu_us_per_req'))}, p50 "
                f"{'+' if _added(pairs, 'lat_p50_ms') >= 0 else ''}"
                f"{fmt(_added(pairs, 'lat_p50_ms'), 3)} ms"
            )
        out.append(f"| {mode}, c={c} | " + " | ".join(row) + " |")
    spans = result.get("spans") or {}
    if spans:
        got = ", ".join(f"{k}: {v:,}" for k, v in sorted(spans.get("spans", {}).items()))
        out += [
            "",
            f"Spans received by the OTLP receiver: {got} "
            f"({spans.get('requests', 0):,} export requests, {spans.get('bytes', 0):,} bytes).",
        ]
    return [*out, ""]


BASELINES = ("bare", "nginx", "vllm-router")
RUST_ROUTER = "vllm-router"
GOALS_17 = {"nonstream_vs_bare": 0.85, "added_p50_vs_bare_ms": 0.15, "rss_idle_mb": 100.0,
            "rss_open_mb": 150.0, "streams_vs_rust_router": 1.0}  # fmt: skip


def ceiling_table(result: dict[str, Any]) -> list[str]:
    """Issue #17's four figures per proxy, and each quantroute against the bare proxy."""
    cells: list[Cell] = result["cells"]
    names = [n for n in (*BASELINES[::-1], *_names(cells)) if n in set(_names(cells))]
    names = list(dict.fromkeys(names))
    held = result.get("open_streams") or {}
    n_open = next((v["streams"] for v in held.values()), 0)
    rows = [
        "| proxy | non-stream req/s, c=32 | added p50 at c=1 (ms, vs direct) | streams/s, c=128 "
        f"| RSS idle / with {n_open:,} open streams (MB) |",
        "|---|--:|--:|--:|--:|",
    ]

    def rps(name: str, mode: str, c: int) -> str:
        return fmt(med(x["rps"] for x in _select(cells, mode, c, name)), 0)

    for name in names:
        idle = (result["rss_kb"].get(name) or {}).get("idle_start") or 0
        opened = (held.get(name) or {}).get("rss_kb") or 0
        rows.append(
            f"| {name} | {rps(name, 'non-stream', 32)} | "
            f"+{fmt(_added(_pairs(cells, 'non-stream', 1, name), 'lat_p50_ms'))} | "
            f"{rps(name, 'stream', 128)} | {idle * 1.024 / 1000:.0f} / {opened * 1.024 / 1000:.0f} |"
        )
    if "bare" not in names:
        return rows
    rows += ["", "| against the bare proxy (same run) | non-stream c=32 | added p50 c=1 | "
             "streams c=128 | verdict (issue #17 goals) |", "|---|--:|--:|--:|---|"]  # fmt: skip
    for name in (n for n in names if n != "bare"):
        ns = _ratio(_pairs(cells, "non-stream", 32, name, "bare"), "rps")
        st = _ratio(_pairs(cells, "stream", 128, name, "bare"), "rps")
        p50 = _added(_pairs(cells, "non-stream", 1, name, "bare"), "lat_p50_ms")
        idle = ((result["rss_kb"].get(name) or {}).get("idle_start") or 0) * 1.024 / 1000
        opened = ((held.get(name) or {}).get("rss_kb") or 0) * 1.024 / 1000
        verdict = ""
        if name not in BASELINES:
            g = GOALS_17
            ok = [ns >= g["nonstream_vs_bare"], p50 <= g["added_p50_vs_bare_ms"],
                  idle < g["rss_idle_mb"], not held or opened < g["rss_open_mb"]]  # fmt: skip
            labels = ["req/s ≥ 0.85×", "p50 ≤ +0.15 ms", "RSS idle < 100", "RSS open < 150"]
            verdict = ", ".join(
                f"{lab} {'met' if o else '**not met**'}" for lab, o in zip(labels, ok, strict=True)
            )
        rows.append(
            f"| {name}/bare | ×{fmt(ns)} | {'+' if p50 >= 0 else ''}{fmt(p50)} ms | ×{fmt(st)} "
            f"| {verdict} |"
        )
    return rows + rust_router_rows(cells, names)


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of what ``values`` sample: the order
    statistics ``j`` and ``n - j + 1`` (1-based) for the largest ``j`` whose binomial tail
    ``P(Bin(n, 1/2) < j)`` is at most half of ``1 - confidence`` (so the interval covers the
    median with at least that confidence, whatever the distribution; NaN for fewer than six
    values at 95%, where no such ``j`` exists). Pairs' differences at c=1 are skewed by slow
    spells, so no normal approximation."""
    n = len(values)
    ordered = sorted(values)
    tail, j = 0.0, 0
    while j < n // 2:
        step = math.comb(n, j) / 2**n  # P(Bin(n, 1/2) == j), exact to any n
        if tail + step > (1.0 - confidence) / 2.0:
            break
        tail += step
        j += 1
    if j == 0:
        return math.nan, math.nan
    return ordered[j - 1], ordered[n - j]


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        one = values[0] if values else math.nan
        return one, one, one
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def c1_pairs_table(result: dict[str, Any]) -> list[str]:
    """Added p50 at c=1 over the bare proxy, read pair by pair from ``run.py --c1-pairs``: the
    median of the pairs' differences with its 95% interval (:func:`median_interval`) and their
    quartiles, the CPU per request of each, and the share of the proxy's core the hypervisor
    stole in each window."""
    windows: list[Cell] = result.get("c1_pairs") or []
    bare = {w["pair"]: w for w in windows if w["target"] == "bare"}
    if not bare:
        return []
    names = list(dict.fromkeys(w["target"] for w in windows if w["target"] != "bare"))
    seconds = next(iter(bare.values()))["window_s"]
    rows = [
        f"## Added p50 at c=1, in pairs of {fmt(seconds, 1)}-second windows",
        "",
        "Each pair: a gateway and the bare proxy one after the other (the order swapped every "
        "pair), so both share the machine's state of that moment.",
        "",
        "| gateway | pairs | added p50 over bare: median (quartiles) | the median's 95% interval "
        "| CPU per request, median (µs): gateway / bare | ×bare, median of pairs "
        "| steal on the proxy's core, median |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name in names:
        pairs = [(w, bare[w["pair"]]) for w in windows if w["target"] == name and w["pair"] in bare]
        added = sorted(g["lat_p50_ms"] - b["lat_p50_ms"] for g, b in pairs)
        q1, q2, q3 = _quartiles(added)
        low, high = median_interval(added)
        interval = "n/a" if math.isnan(low) else f"{low:+.2f} to {high:+.2f} ms"
        cpu_g = med(g["gateway_cpu_us_per_req"] for g, _ in pairs)
        cpu_b = med(b["gateway_cpu_us_per_req"] for _, b in pairs)
        ratio = med(g["gateway_cpu_us_per_req"] / b["gateway_cpu_us_per_req"] for g, b in pairs)
        steal_g = med(g["proxy_steal_pct"] for g, _ in pairs)
        steal_b = med(b["proxy_steal_pct"] for _, b in pairs)
        rows.append(
            f"| {name} | {len(pairs)} | {q2:+.2f} ms ({q1:+.2f} to {q3:+.2f}) | {interval} | "
            f"{fmt(cpu_g, 0)} / {fmt(cpu_b, 0)} | ×{fmt(ratio)} | "
            f"{fmt(steal_g, 1)}% / {fmt(steal_b, 1)}% |"
        )
    return [*rows, ""]


def rust_router_rows(cells: list[Cell], names: list[str]) -> list[str]:
    """Each quantroute against the Rust router, when it ran: issue #17's stream goal."""
    if RUST_ROUTER not in names:
        return []
    rows = ["", "| against the Rust router (same run) | non-stream c=32 | added p50 c=1 | "
            "streams c=128 | verdict (issue #17 goal) |", "|---|--:|--:|--:|---|"]  # fmt: skip
    for name in (n for n in names if n not in BASELINES):
        ns = _ratio(_pairs(cells, "non-stream", 32, name, RUST_ROUTER), "rps")
        st = _ratio(_pairs(cells, "stream", 128, name, RUST_ROUTER), "rps")
        p50 = _added(_pairs(cells, "non-stream", 1, name, RUST_ROUTER), "lat_p50_ms")
        goal = GOALS_17["streams_vs_rust_router"]
        verdict = "n/a" if math.isnan(st) else "met" if st >= goal else "**not met**"
        rows.append(
            f"| {name}/{RUST_ROUTER} | ×{fmt(ns)} | {'+' if p50 >= 0 else ''}{fmt(p50)} ms "
            f"| ×{fmt(st)} | streams ≥ {goal:.1f}× {verdict} |"
        )
    return rows


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def _foreign(cell: Cell) -> float:
    return float(sum(cell["foreign_pct"].values()))


def _throughput_row(cells: list[Cell], name: str, mode: str, c: int, target: float) -> str:
    """Median verdict, the CPU-based capacity, and the repetition with the least foreign CPU."""
    mine = _select(cells, mode, c, name)
    rps = med(x["rps"] for x in mine)
    direct = med(x["rps"] for x in _select(cells, mode, c, "direct"))
    us = med(x["gateway_cpu_us_per_req"] for x in mine)
    cpu = med(x["gateway_cpu_pct"] for x in mine)
    ok = None if math.isnan(rps) else rps >= target
    quiet = ""
    if len(mine) > 1:
        q = min(mine, key=_foreign)
        f = q["foreign_pct"]
        quiet = (
            f"; quietest repetition (foreign CPU {f.get('cpu0', 0):.0f}% / {f.get('cpu1', 0):.0f}%): "
            f"{q['rps']:,.0f} req/s, core {q['gateway_cpu_pct']:.0f}% busy"
        )
    return (
        f"| ≥ {target:,.0f} {mode} req/s at c={c} | {fmt(rps, 0)} req/s (direct "
        f"{fmt(direct, 0)}); gateway core {fmt(cpu, 0)}% busy, {fmt(us, 0)} µs CPU/req "
        f"→ ≈{fmt(1e6 / us if us else math.nan, 0)} req/s at 100% of one core{quiet} "
        f"| {_verdict(ok)} |"
    )


def targets_table(result: dict[str, Any], name: str) -> list[str]:
    cells: list[Cell] = result["cells"]
    rows = ["| target | measured | verdict |", "|---|---|---|"]
    added = _added(_pairs(cells, "non-stream", 1, name), "lat_p50_ms")
    ok = None if math.isnan(added) else added < TARGETS["added_p50_ms"]
    rows.append(f"| added p50 at c=1 (non-stream) < 1 ms | +{fmt(added, 3)} ms | {_verdict(ok)} |")
    added_s = _added(_pairs(cells, "stream", 1, name), "ttfb_p50_ms")
    rows.append(f"| (info) added first-chunk p50 at c=1 (stream) | +{fmt(added_s, 3)} ms | |")
    for mode, c, key in (
        ("non-stream", 32, "nonstream_c32_rps"),
        ("stream", 128, "stream_c128_rps"),
    ):
        rows.append(_throughput_row(cells, name, mode, c, TARGETS[key]))
    rows.append(_rss_row(result["rss_kb"][name], [x for x in cells if x["target"] == name]))
    prefix = "" if name == "gateway" else f"{name}: "
    equal = all(
        v["equal"]
        for k, v in result["verify"].items()
        if k.startswith(prefix) and (prefix or ":" not in k)
    )
    rows.append(f"| SSE and JSON relayed byte for byte | see below | {_verdict(equal)} |")
    return rows


def mib(kb: float) -> str:
    """/proc reports KiB: show MiB and decimal MB (the target's unit is ambiguous)."""
    return f"{kb / 1024:.1f} MiB ({kb * 1.024 / 1000:.1f} MB)"


def _rss_row(rss: dict[str, int | None], cells: list[Cell]) -> str:
    peak = max([rss.get("peak_hwm") or 0, *(x["rss_peak_kb"] for x in cells)])
    limit = TARGETS["rss_mb"]
    if peak * 1.024 / 1000 < limit:
        verdict = _verdict(True)
    elif peak / 1024 < limit:
        verdict = "**borderline** (under 100 MiB, over 100 MB)"
    else:
        verdict = _verdict(False)
    return (
        f"| gateway RSS < 100 MB | peak {mib(peak)} (VmHWM); idle at start "
        f"{mib(rss.get('idle_start') or 0)}; after the run {mib(rss.get('after') or 0)} | {verdict} |"
    )


def verify_table(checks: dict[str, Any]) -> list[str]:
    rows = ["| case | direct vs gateway | status | bytes | SSE events |", "|---|---|---|---|---|"]
    for name, v in checks.items():
        types = v.get("content_type") or ["", ""]
        same = "identical" if v["equal"] else "**DIFFERENT**"
        if v["equal"] and types[0] != types[1]:
            same = f"identical body; content type `{types[1]}` for `{types[0]}`"
        rows.append(
            f"| {name} | {same} | {v['status'][0]} / {v['status'][1]} | "
            f"{v['bytes'][0]} / {v['bytes'][1]} | {v['events'] if v['events'] is not None else '–'} |"
        )
    return rows


def _pct_table(title: str, rows: list[list[Any]]) -> list[str]:
    out = [f"| {title} | % of busy samples |", "|---|---:|"]
    out += [f"| `{name}` | {pct:.1f} |" for name, pct in rows]
    return out


def profile_section(profile: dict[str, Any]) -> list[str]:
    title = (
        f"### {profile['target']}: {profile['mode']}, concurrency {profile['concurrency']}, "
        f"{profile['rps_while_profiled']:,.0f} req/s while sampled"
    )
    if "error" in profile:
        return [title, "", "py-spy failed:", "", "```", profile["error"], "```", ""]
    own = dict(profile["component_own"])
    total = dict(profile["component_total"])
    comp = ["| component | own % | total % |", "|---|---:|---:|"]
    comp += [f"| {k} | {own[k]:.1f} | {total.get(k, 0.0):.1f} |" for k in own]
    return [
        title,
        "",
        f"{profile['samples']} busy samples.",
        "",
        *comp,
        "",
        *_pct_table("quantroute frame (total)", profile["quantroute_total"]),
        "",
        *_pct_table("frame (own)", profile["own"]),
        "",
        *_pct_table("frame (total, below the entry points)", profile["total"]),
        "",
    ]


def profiles_section(profiles: list[dict[str, Any]]) -> list[str]:
    if not profiles:
        return ["(profile skipped)", ""]
    out = [
        "py-spy samples of the gateway process under load; idle samples (waiting in epoll) are "
        "left out, so shares are of busy time. Own % = the innermost Python frame is there (C "
        "calls such as socket sends count toward the Python function that made them); total % = "
        "anywhere on the stack. The gateway runs request handling, the upstream exchange (its own "
        "task) and the relay as separate asyncio tasks, so totals of one request path do not nest "
        "under a single frame.",
        "",
    ]
    for profile in profiles:
        out += profile_section(profile)
    return out


def prompt_note(chars: int) -> str:
    if not chars:
        return f"one short user message ({len(loadgen.PROMPT)} characters)"
    return f"one user message padded with neutral context to {chars:,} characters"


def header(result: dict[str, Any]) -> list[str]:
    m, s = result["machine"], result["settings"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    label = f" — {s['label']}" if s.get("label") else ""
    return [
        f"# Gateway overhead{label}",
        "",
        f"- Date: {m['date_utc']}; code under test: "
        f"{m.get('code_under_test', 'installed quantroute')}; checkout at {m['git_commit']} "
        f"({m['src_changes']}); the gateway imported `{m['quantroute_from']}`",
        f"- Machine: {m['cores']} × {m['cpu']}, {m['memory_mb']:,} MB, Linux {m['kernel']}, "
        f"Python {m['python']}; {pk}",
        f"- Load average (1/5/15 min) before: {m['loadavg_before']}; after: {m['loadavg_after']}"
        " (other engineers share this machine; see the foreign-CPU column)",
        f"- {s['reps']} repetition(s) per cell, warm-up {s['warmup_s']} s, window {s['measure_s']} s;"
        f" medians shown; measuring took {result['measure_seconds']:.0f} s",
        "- Pinning: fake backends + load generator on core 0, gateway (`quantroute serve`, uvloop + "
        "httptools) on core 1. Two identical backends in group `auto` with a capability matrix: "
        "every request runs the full routing decision. Direct = backend 0 with its served name.",
        f"- Prompt: {prompt_note(s.get('prompt_chars', 0))}.",
        "- Non-stream: `max_tokens` 16; stream: `max_tokens` 64 → role chunk + 64 content chunks + "
        "`[DONE]` (the client does not ask for usage, so the gateway adds `include_usage` upstream "
        "and strips that chunk: the realistic path).",
        "",
    ]


def _gateway_lines(commands: dict[str, Any]) -> list[str]:
    out = []
    for name, g in commands["gateways"].items():
        path = f"PYTHONPATH={g['pythonpath']} " if g.get("pythonpath") else ""
        out.append(f"{path}{g['command']}    # {name}, exit code {g['exit_code']}")
    return out


def render(result: dict[str, Any]) -> str:
    cells: list[Cell] = result["cells"]
    lines = header(result)
    lines += [
        "## Against the ceiling (issue #17): the bare FastAPI + aiohttp proxy, nginx, the Rust "
        "router",
        "",
        *ceiling_table(result),
        "",
        *c1_pairs_table(result),
    ]
    for name in (n for n in _names(cells) if not n.startswith("trace-") and n not in BASELINES):
        lines += [
            f"## Against the targets (issue #2): {name}",
            "",
            *targets_table(result, name),
            "",
        ]
    lines += tracing_table(result)
    lines += ["## Results (medians)", "", *main_table(cells)]
    lines += [
        "TTFB = first body bytes (streams: first SSE chunk). gw CPU = the gateway process's CPU "
        "time over the window (100% = core 1 saturated); foreign CPU = core busy time not used "
        "by the benchmark's own processes on it.",
        "",
        "## Byte-for-byte relay",
        "",
        *verify_table(result["verify"]),
        "",
        "## Where the gateway's time goes (py-spy)",
        "",
        *profiles_section(result.get("profiles") or []),
    ]
    if ANALYSIS.exists():
        lines += [ANALYSIS.read_text().rstrip(), ""]
    lines += [
        "## How this was run",
        "",
        "```",
        result["commands"]["benchmark"],
        result["commands"]["backends"],
        *_gateway_lines(result["commands"]),
        "```",
        "",
        "Gateway config (generated):",
        "",
        "```yaml",
        result["config"].rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else procs.HERE / "results.json")
    print(render(json.loads(path.read_text())))
