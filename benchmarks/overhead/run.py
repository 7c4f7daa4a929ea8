"""Gateway-overhead benchmark: the same load straight to a fake backend and through quantroute.

    pip install -r benchmarks/overhead/requirements.txt
    python benchmarks/overhead/run.py            # 3 repetitions, ~5 minutes
    python benchmarks/overhead/run.py --quick    # 1 repetition, short windows, ~1 minute
    python benchmarks/overhead/run.py --tracing 0.01 1   # + gateways tracing 1% and 100%

Fake backends run in one process on core 0, ``quantroute serve`` on core 1, this process (the load
generator) on core 0. Writes RESULTS.md and results.json beside this file (or ``--output-dir``)
and prints the Markdown. Every process started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

import checks
import fleet as fleet_mod
import loadgen
import machine
import procs
import report
import spy
from loadgen import Level, Target
from monitor import Monitor

LEVELS = (1, 32, 128)
MODES = ("non-stream", "stream")
IDLE_AFTER_S = 2.0


@dataclass(frozen=True)
class Settings:
    reps: int
    levels: tuple[int, ...]
    modes: tuple[str, ...]
    warmup_s: float
    measure_s: float
    max_requests: int
    profile_s: int
    profile_rate: int
    profile_stream: bool
    wait_quiet_s: float
    quiet_load: float
    label: str
    candidate: str | None
    prompt_chars: int
    ref: str | None
    access: bool
    tracing: tuple[float, ...]
    open_streams: int
    nginx: bool
    vllm_router: bool
    smoke: bool
    c1_pairs: int = 0
    c1_window_s: float = 1.0


def _settings(argv: list[str] | None) -> tuple[Settings, Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repetition, short windows")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds for CI: byte-for-byte checks, tiny windows, no profile; exit 1 on a "
        "crash, an error or a broken relay (never on a timing)",
    )
    p.add_argument(
        "--open-streams",
        type=int,
        default=None,
        help="RSS of every proxy with N streams open at once (default 1000; 0 skips)",
    )
    p.add_argument("--no-nginx", action="store_true", help="skip the nginx baseline")
    p.add_argument(
        "--no-vllm-router",
        action="store_true",
        help="skip the Rust router baseline (run when $QR_VLLM_ROUTER or vllm-router on the PATH "
        "is found)",
    )
    p.add_argument("--reps", type=int, default=None, help="repetitions per cell (default 3)")
    p.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--measure", type=float, default=None, help="seconds per window (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 1)")
    p.add_argument("--max-requests", type=int, default=200_000, help="cap per window")
    p.add_argument("--profile", type=int, default=None, help="py-spy seconds (0: skip)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-stream", action="store_true", help="also profile stream, c=128")
    p.add_argument(
        "--ref",
        default=None,
        help="measure the gateway of this git ref (exported with git archive), not the "
        "installed working tree, which others may be editing",
    )
    p.add_argument(
        "--candidate",
        default=None,
        metavar="SRC_DIR",
        help="also run a second gateway importing quantroute from SRC_DIR (a patched copy)",
    )
    p.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S s for low load")
    p.add_argument("--quiet-load", type=float, default=0.5, help="1-min load avg deemed quiet")
    p.add_argument(
        "--prompt-chars",
        type=int,
        default=0,
        help="pad the prompt to N characters (default: short)",
    )
    p.add_argument(
        "--access",
        action="store_true",
        help="also run the gateway with API keys and quotas on (target 'access')",
    )
    p.add_argument(
        "--tracing",
        type=float,
        nargs="*",
        default=[],
        metavar="RATIO",
        help="also run gateways with OpenTelemetry tracing on at these sampling ratios "
        "(e.g. 0.01 1), exporting OTLP/HTTP to a counting receiver on core 0",
    )
    p.add_argument(
        "--c1-pairs",
        type=int,
        default=0,
        help="after the cells: N pairs of short c=1 windows, each gateway then the bare proxy",
    )
    p.add_argument("--c1-window", type=float, default=1.0, help="seconds per c=1 pair window")
    p.add_argument("--label", default="", help="a note for the report (e.g. 'patched')")
    p.add_argument("--output-dir", type=Path, default=procs.HERE)
    a = p.parse_args(argv)
    quick, smoke = bool(a.quick), bool(a.smoke)
    if smoke:
        quick, a.levels = True, [8]
    settings = Settings(
        reps=a.reps or (1 if quick else 3),
        levels=tuple(a.levels),
        modes=tuple(a.modes),
        warmup_s=a.warmup if a.warmup is not None else (0.2 if smoke else 0.5 if quick else 1.0),
        measure_s=a.measure or (0.5 if smoke else 2.0 if quick else 5.0),
        max_requests=a.max_requests,
        profile_s=a.profile if a.profile is not None else (0 if smoke else 4 if quick else 10),
        profile_rate=a.profile_rate,
        profile_stream=a.profile_stream,
        wait_quiet_s=a.wait_quiet,
        quiet_load=a.quiet_load,
        label=a.label,
        candidate=a.candidate,
        prompt_chars=a.prompt_chars,
        ref=a.ref,
        access=a.access,
        tracing=tuple(a.tracing),
        open_streams=a.open_streams if a.open_streams is not None else (50 if smoke else 1000),
        nginx=not a.no_nginx,
        vllm_router=not a.no_vllm_router,
        smoke=smoke,
        c1_pairs=1 if smoke else a.c1_pairs,
        c1_window_s=0.3 if smoke else a.c1_window,
    )
    return settings, a.output_dir


# -- the measurement ---------------------------------------------------------------------------
async def run_cell(
    f: fleet_mod.Fleet, target: Target, level: Level, size: int, **tags: int
) -> dict[str, Any]:
    """One window of ``level``'s load on ``target``, with the proxy's CPU and the cores' steal
    over it; ``tags`` say where it belongs (``rep``, or ``pair`` for :func:`run_c1_pairs`)."""
    mon = Monitor(f.gateway_pid(target.name), [f.backend.pid])
    stats = await loadgen.run_level(target, level, size, mon.watch)
    usage = mon.last
    assert usage is not None
    cell = {
        "mode": "stream" if level.stream else "non-stream",
        "concurrency": level.concurrency,
        "target": target.name,
        **tags,
        **asdict(stats),
        "gateway_cpu_pct": usage.gateway_cpu_pct,
        "gateway_cpu_us_per_req": 1e6 * usage.gateway_cpu_s / max(stats.requests, 1),
        "core0_ours_pct": usage.pct(usage.core0_ours_cpu_s),
        "foreign_pct": usage.foreign_pct,
        "steal_pct": {k: usage.pct(v) for k, v in usage.core_steal_s.items()},
        "proxy_steal_pct": usage.pct(usage.core_steal_s.get(f"cpu{fleet_mod.GATEWAY_CPU}", 0.0)),
        "rss_peak_kb": usage.rss_peak_kb,
        "loadavg": procs.loadavg(),
    }
    print(report.progress_line(cell), flush=True)
    return cell


async def run_cells(
    s: Settings, f: fleet_mod.Fleet, sizes: dict[tuple[str, bool], int]
) -> list[dict[str, Any]]:
    cells = []
    for rep in range(s.reps):
        # Rotate which target goes first so slow drifts in background load cancel out.
        targets = f.targets
        order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
        for stream in (mode == "stream" for mode in s.modes):
            for c in s.levels:
                level = Level(stream, c, s.warmup_s, s.measure_s, s.max_requests, s.prompt_chars)
                for target in order:
                    size = sizes[target.name, stream]
                    cells.append(await run_cell(f, target, level, size, rep=rep))
    return cells


async def run_c1_pairs(
    s: Settings, f: fleet_mod.Fleet, sizes: dict[tuple[str, bool], int]
) -> list[dict[str, Any]]:
    """Non-streamed c=1 in short windows, each quantroute gateway and the bare proxy one after
    the other, the order swapped every pair. At c=1 what a request costs on this VM moves from
    one second to the next (with the hypervisor's steal, seen only at c=1, where the vCPU idles
    between requests, among other causes): one proxy's 3-second cell can fall in a slow spell
    that the other's misses. Windows a second apart mostly share it. Each window is a cell
    tagged with its pair (CPU per request and steal recorded as in every cell), and the report
    reads the added p50 pair by pair (:func:`report.c1_pairs_table`)."""
    if s.c1_pairs <= 0:
        return []
    bare = [g.target for g in f.gateways if g.target.name == "bare"]
    if not bare:
        print("# c=1 pairs skipped: no bare proxy", file=sys.stderr, flush=True)
        return []
    targets = [g.target for g in f.quantroutes] + bare
    level = Level(False, 1, 0.2, s.c1_window_s, s.max_requests, s.prompt_chars)
    windows = []
    for pair in range(s.c1_pairs):
        for target in targets if pair % 2 == 0 else targets[::-1]:
            windows.append(await run_cell(f, target, level, sizes[target.name, False], pair=pair))
    return windows


async def run_profile(
    s: Settings, gw: fleet_mod.GatewayProc, stream: bool, size: int, workdir: Path
) -> dict[str, Any]:
    """py-spy on one gateway during a separate load (not in the table)."""
    c = 128 if stream else 32
    mode = "stream" if stream else "non-stream"
    level = Level(stream, c, 1.0, s.profile_s + 2.0, s.max_requests, s.prompt_chars)
    load = asyncio.ensure_future(loadgen.run_level(gw.target, level, size))
    await asyncio.sleep(1.0)
    raw = workdir / f"{gw.target.name}-{mode}.pyspy.txt"
    cpu = fleet_mod.BACKEND_CPU
    err = await spy.record(gw.proc.pid, s.profile_s, s.profile_rate, raw, cpu)
    stats = await load
    head = {
        "target": gw.target.name,
        "mode": mode,
        "concurrency": c,
        "rps_while_profiled": stats.rps,
    }
    if not raw.exists():
        print(f"py-spy produced no output:\n{err}", file=sys.stderr)
        return {**head, "error": err[-2000:]}
    return {**head, "raw_path": str(raw), **asdict(spy.analyse(raw.read_text()))}


async def run_profiles(
    s: Settings, f: fleet_mod.Fleet, sizes: dict[tuple[str, bool], int], workdir: Path
) -> list[dict[str, Any]]:
    if s.profile_s <= 0:
        return []
    try:  # checked before the load starts: a missing py-spy must not lose the measured cells
        spy.py_spy()
    except RuntimeError as exc:
        print(f"# profile skipped: {exc}", file=sys.stderr, flush=True)
        return []
    modes = (False, True) if s.profile_stream else (False,)
    return [
        await run_profile(s, gw, stream, sizes[gw.target.name, stream], workdir)
        for gw in f.quantroutes
        for stream in modes
    ]


async def bench(s: Settings, f: fleet_mod.Fleet, workdir: Path) -> dict[str, Any]:
    rss_idle = {g.target.name: procs.status_kb(g.proc.pid, "VmRSS") for g in f.gateways}
    verified = await checks.verify(f, s.prompt_chars)
    sizes = await checks.expected_sizes(f, s.prompt_chars)
    started = time.time()
    cells = await run_cells(s, f, sizes)
    c1_pairs = await run_c1_pairs(s, f, sizes)
    open_streams = await run_open_streams(s, f)
    profiles = await run_profiles(s, f, sizes, workdir)
    await asyncio.sleep(IDLE_AFTER_S)
    spans = receiver_stats(f)
    rss = {
        g.target.name: {
            "idle_start": rss_idle[g.target.name],
            "peak_hwm": procs.status_kb(g.proc.pid, "VmHWM"),
            "after": procs.status_kb(g.proc.pid, "VmRSS"),
        }
        for g in f.gateways
    }
    return {
        "verify": verified,
        "cells": cells,
        "c1_pairs": c1_pairs,
        "profiles": profiles,
        "open_streams": open_streams,
        "spans": spans,
        "rss_kb": rss,
        "measure_started": started,
        "measure_seconds": time.time() - started,
    }


async def run_open_streams(s: Settings, f: fleet_mod.Fleet) -> dict[str, Any]:
    """RSS of each proxy with ``s.open_streams`` streams open at once (backends slowed down
    meanwhile: SIGUSR1), then every client gone mid-stream."""
    if s.open_streams <= 0:
        return {}
    out: dict[str, Any] = {}
    os.kill(f.backend.pid, signal.SIGUSR1)
    try:
        for gw in f.gateways:
            sample: dict[str, int | None] = {}

            async def rss(pid: int = gw.proc.pid, into: dict[str, int | None] = sample) -> None:
                into["rss_kb"] = procs.status_kb(pid, "VmRSS")

            opened = await loadgen.hold_streams(gw.target, s.open_streams, rss)
            out[gw.target.name] = {"streams": s.open_streams, "open": opened, **sample}
            print(f"# {gw.target.name}: {opened}/{s.open_streams} streams open, "
                  f"RSS {sample.get('rss_kb')} kB", flush=True)  # fmt: skip
            await asyncio.sleep(1.0)  # the aborted streams wind down
    finally:
        os.kill(f.backend.pid, signal.SIGUSR1)
    return out


def smoke_failures(result: dict[str, Any], f: fleet_mod.Fleet) -> list[str]:
    """What makes the CI smoke fail: a crash, an error, a broken relay. Never a timing."""
    bad = [f"relay differs: {k}" for k, v in result["verify"].items() if not v["equal"]]
    for cell in result["cells"]:
        where = f"{cell['target']} {cell['mode']} c={cell['concurrency']}"
        if cell["errors"]:
            bad.append(f"{where}: {cell['errors']} failed requests")
        if not cell["requests"]:
            bad.append(f"{where}: no request completed")
    for window in result.get("c1_pairs", []):
        if window["errors"] or not window["requests"]:
            bad.append(f"{window['target']} c=1 pair {window['pair']}: {window['errors']} failed, "
                       f"{window['requests']} completed")  # fmt: skip
    for name, held in result.get("open_streams", {}).items():
        if held["open"] != held["streams"]:
            bad.append(f"{name}: {held['open']} of {held['streams']} streams opened")
    for proc in (f.backend, *(g.proc for g in f.gateways)):
        if proc.popen.poll() is not None:
            bad.append(f"{proc.name} exited ({proc.popen.returncode}):\n{procs.log_tail(proc)}")
    return bad


def receiver_stats(f: fleet_mod.Fleet) -> dict[str, Any] | None:
    """Spans the OTLP receiver got per tracing gateway (its ``service.name``)."""
    if f.receiver_url is None:
        return None
    url = f.receiver_url.removesuffix("/v1/traces") + "/stats"
    with urllib.request.urlopen(url, timeout=5.0) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def wait_quiet(s: Settings) -> str:
    """Wait (bounded) for the 1-minute load average to drop under ``quiet_load``."""
    deadline = time.monotonic() + s.wait_quiet_s
    while time.monotonic() < deadline and float(procs.loadavg().split()[0]) > s.quiet_load:
        time.sleep(5.0)
    return procs.loadavg()


def main(argv: list[str] | None = None) -> int:
    s, out_dir = _settings(argv)
    load_before = wait_quiet(s) if s.wait_quiet_s > 0 else procs.loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="qr-overhead-"))
    print(f"# workdir {workdir}; load average {load_before}", flush=True)
    source, code = None, "installed quantroute (working tree)"
    if s.ref:
        src, commit = procs.export_ref(s.ref, workdir / "ref")
        source, code = str(src), f"git {s.ref} = {commit}, exported to {src}"
    with contextlib.ExitStack() as stack:
        f = fleet_mod.start(
            stack,
            workdir,
            source=source,
            candidate=s.candidate,
            access=s.access,
            tracing=s.tracing,
            nginx=s.nginx,
            vllm_router=s.vllm_router,
        )
        with procs.pinned(fleet_mod.BACKEND_CPU):
            result = uvloop.run(bench(s, f, workdir))
        failures = smoke_failures(result, f)
    result["settings"] = asdict(s)
    result["machine"] = machine.info(load_before, procs.loadavg(), source)
    result["machine"]["code_under_test"] = code
    result["commands"] = {
        "benchmark": " ".join([Path(sys.executable).name, *sys.argv]),
        "backends": "taskset -c 0 " + " ".join(f.backend_cmd),
        "gateways": {
            g.target.name: {
                "command": "taskset -c 1 " + " ".join(g.cmd),
                "pythonpath": g.pythonpath,
                "exit_code": g.proc.popen.returncode,
            }
            for g in f.gateways
        },
    }
    result["config"] = f.config_path.read_text()
    markdown = report.render(result)  # in the smoke too: the report's code is exercised
    if s.smoke:
        for failure in failures:
            print(f"[overhead smoke] FAIL {failure}", file=sys.stderr)
        print(f"[overhead smoke] {'FAILED' if failures else 'ok'}: "
              f"{len(result['cells'])} cells, {len(result['c1_pairs'])} c=1 pair windows, "
              f"{len(result['verify'])} relay checks, a report of {len(markdown):,} characters",
              flush=True)  # fmt: skip
        return 1 if failures else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "RESULTS.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
