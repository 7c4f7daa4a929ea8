"""Instructions per request, counted by valgrind: the gateway's work as a ratio that holds.

CPU time per request moves by 15-25% between runs on a shared VM; ``calls.py`` counts Python
calls, which say how much code runs but not what it costs. This counts the machine instructions
each proxy executes per request (callgrind's ``Ir``, every thread of the process, the
interpreter, uvloop and the C extensions included). Each proxy runs under
``valgrind --tool=callgrind`` with instrumentation off while it starts and warms up; then
instrumentation is switched on for ``--requests`` requests (one at a time, or ``--concurrency``
at a time in a closed loop), the counts are dumped,
and the same length of time with no traffic is counted too and taken off (scrapes and timers
run per second, not per request). Two runs of the same code agree within about 2% for the
gateway (its scrapes come whole) and 0.2% for the bare proxy.

What it does not see: cache misses, branch mispredictions, the kernel. An instruction of the
gateway costs about what one of the bare proxy does (the same interpreter, loop and libraries),
so the ratio of counts is the ratio of CPU with the machine's noise taken out; read it beside
the CPU ratios of ``run.py``. Needs ``valgrind`` (``apt-get install valgrind``); under it each
proxy runs about 50 times slower, so keep ``--requests`` in the hundreds.

    python instructions.py                                # the installed gateway, the bare proxy
    python instructions.py --src /tmp/base/src ../../src  # gateways importing quantroute from each
    python instructions.py --concurrency 32               # the c=32 goal's load, counted

At ``--concurrency 32`` a proxy under valgrind is saturated, as the c=32 cells of ``run.py`` are:
work done per event-loop turn or by time is shared by more requests, so the gateway's count is
lower than one at a time, and the ratio to the bare proxy is the one the c=32 goal is about.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import baselines
import fleet
import loadgen
import procs

WARM_UP = 100
START_TIMEOUT_S = 240.0  # a proxy starting under valgrind: about 20 s here
CONTROL_TIMEOUT_S = 120.0
TOTAL = re.compile(rb"^(?:summary|totals): (\d+)", re.M)


class Count(NamedTuple):
    instructions: int
    elapsed: float


def _under_callgrind(cmd: Sequence[str], workdir: Path, name: str) -> list[str]:
    out = workdir / f"callgrind-{name}.%p"
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", *cmd]  # fmt: skip


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, timeout=CONTROL_TIMEOUT_S,
                   check=True)  # fmt: skip


def _dumps(workdir: Path, pid: int) -> set[Path]:
    return set(workdir.glob(f"callgrind-*.{pid}*"))


def _window(proc: procs.Proc, workdir: Path, during: Callable[[], None]) -> Count:
    """The instructions ``proc`` executes while ``during`` runs, and how long it ran."""
    pid = proc.popen.pid
    before = _dumps(workdir, pid)
    _control("--zero", str(pid))
    _control("--instr=on", str(pid))
    started = time.monotonic()
    during()
    elapsed = time.monotonic() - started
    _control("--dump", str(pid))
    _control("--instr=off", str(pid))
    total = 0
    for dump in _dumps(workdir, pid) - before:  # one per thread that ran, or one in all
        match = TOTAL.search(dump.read_bytes())
        if match is None:
            raise RuntimeError(f"{proc.name}: no total in {dump}")
        total += int(match.group(1))
    if total == 0:
        raise RuntimeError(f"{proc.name} dumped no counts:\n{procs.log_tail(proc)}")
    return Count(total, elapsed)


def per_request(
    proc: procs.Proc,
    target: loadgen.Target,
    workdir: Path,
    requests: int,
    stream: bool,
    concurrency: int = 1,
) -> float:
    """Instructions per request, net of the same time with no traffic."""

    def load(n: int) -> None:
        asyncio.run(loadgen.closed_loop(target, n, stream, concurrency))

    load(WARM_UP)
    busy = _window(proc, workdir, lambda: load(requests))
    idle = _window(proc, workdir, lambda: time.sleep(busy.elapsed))
    scale = busy.elapsed / idle.elapsed if idle.elapsed > 0 else 1.0
    return (busy.instructions - idle.instructions * scale) / requests


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", nargs="*", default=[None], help="src directories (default: installed)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare FastAPI+aiohttp proxy")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--stream", action="store_true", help="streamed requests (65 events each)")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight at a time")
    a = p.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("instructions.py needs valgrind: apt-get install valgrind")
    real_start = procs.start

    def start(name: str, cmd: Sequence[str], cpu: int, log_dir: Path,
              env: dict[str, str] | None = None) -> procs.Proc:  # fmt: skip
        if name != "backends":  # the proxies run under callgrind, the backends do not
            cmd = _under_callgrind(cmd, log_dir, name)
        return real_start(name, cmd, cpu, log_dir, env)

    procs.start = start  # fleet and baselines start their proxies through it
    fleet.START_TIMEOUT_S = START_TIMEOUT_S
    baselines.START_TIMEOUT_S = START_TIMEOUT_S
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="qr-instructions-"))
        ports = [procs.free_port() for _ in range(2)]
        cmd = [sys.executable, str(procs.HERE / "backend_proc.py"), "--model", fleet.MODEL]
        backend = real_start("backends", [*cmd, "--ports", *map(str, ports)], 0, work)
        stack.callback(procs.stop, backend)
        procs.wait_log(backend, "READY", 30.0)
        config = fleet.write_files(work, procs.free_port(), ports)
        rows = []
        for i, src in enumerate([*a.src, *([] if a.no_bare else ["bare"])]):
            if src == "bare":
                env = fleet.environment(None)
                proc, target, _ = baselines.start_bare(stack, work, 1, ports, fleet.MODEL, env)
                name = "bare proxy"
            else:
                gateway = fleet.start_gateway(stack, work, config, f"gateway{i}", src)
                proc, target = gateway.proc, gateway.target
                name = f"gateway ({src or 'installed'})"
            count = per_request(proc, target, work, a.requests, a.stream, a.concurrency)
            rows.append((name, count))
            print(f"{name}: {rows[-1][1]:,.0f} instructions/request", flush=True)
        kind = "streamed" if a.stream else "non-streamed"
        pace = "sequential" if a.concurrency <= 1 else f"{a.concurrency} at a time"
        print(f"\n{a.requests} {kind} requests ({pace}) after {WARM_UP} to warm up,")
        print("net of the same time with no traffic")
        bare = dict(rows).get("bare proxy")
        print(f"{'proxy':48s} {'instructions/req':>17s} {'x bare':>7s}")
        for name, n in rows:
            ratio = f"{n / bare:7.2f}" if bare else ""
            print(f"{name:48s} {n:17,.0f} {ratio}")


if __name__ == "__main__":
    main()
