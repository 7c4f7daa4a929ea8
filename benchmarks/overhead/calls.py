"""Python calls per request: a measure of the gateway's work that does not move with the machine.

CPU time per request moves by 15-25% between runs on a shared VM, more than most single changes
to the request path are worth. This counts instead: each proxy is started with a profile hook
(``callcount/sitecustomize.py``), warmed up, then counts the Python function calls (coroutine
resumptions included) and C function calls of its event-loop thread over ``--requests``
sequential requests, less the same length of time with no traffic. The bare proxy's counts are
the same in every run; the gateway's move by about 3% (its scrapes come whole), far less than
CPU time does. They say how much Python runs per request, not what each call costs: read them
beside the CPU ratios of ``run.py``.

    python calls.py                                # the installed gateway and the bare proxy
    python calls.py --src /tmp/base/src ../../src  # gateways importing quantroute from each
    python calls.py --top 40                       # and the functions called most per request
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import baselines
import fleet
import loadgen
import procs


class Counts(NamedTuple):
    events: Counter[str]
    functions: Counter[str]
    elapsed: float


HOOK = Path(__file__).resolve().parent / "callcount"
WARM_UP = 200


def _hooked(env: dict[str, str], out: Path) -> dict[str, str]:
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOK), env.get("PYTHONPATH")) if p)
    env["QR_CALLS_OUT"] = str(out)
    return env


def _window(proc: procs.Proc, out: Path, during: Callable[[], None]) -> Counts:
    """The counts of ``proc`` while ``during`` runs, and how long it ran."""
    out.unlink(missing_ok=True)
    os.kill(proc.popen.pid, signal.SIGUSR1)
    time.sleep(0.2)  # the handler runs between two loop iterations
    started = time.monotonic()
    during()
    elapsed = time.monotonic() - started
    os.kill(proc.popen.pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if out.exists() and out.stat().st_size:
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(out.read_text())
                return Counts(Counter(data["events"]), Counter(data["functions"]), elapsed)
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} wrote no counts:\n{procs.log_tail(proc)}")


def _count(
    proc: procs.Proc, target: loadgen.Target, out: Path, a: argparse.Namespace
) -> tuple[Counter[str], Counter[str]]:
    """Events and functions per request, net of what the proxy does with no traffic (scrapes,
    timers) over as long as the requests took: background work runs per second, not per
    request, and would otherwise move the count with the machine's speed."""
    asyncio.run(loadgen.sequential(target, WARM_UP, a.stream))
    busy = _window(proc, out, lambda: asyncio.run(loadgen.sequential(target, a.requests, a.stream)))
    idle = _window(proc, out, lambda: time.sleep(busy.elapsed))
    scale = busy.elapsed / idle.elapsed if idle.elapsed > 0 else 1.0

    def net(load: Counter[str], background: Counter[str]) -> Counter[str]:
        return Counter(
            {k: (v - background.get(k, 0) * scale) / a.requests for k, v in load.items()}
        )

    return net(busy.events, idle.events), net(busy.functions, idle.functions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", nargs="*", default=[None], help="src directories (default: installed)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare FastAPI+aiohttp proxy")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--stream", action="store_true", help="streamed requests (65 events each)")
    p.add_argument("--top", type=int, default=0, help="list the N functions called most")
    a = p.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="qr-calls-"))
        ports = [procs.free_port() for _ in range(2)]
        cmd = [sys.executable, str(procs.HERE / "backend_proc.py"), "--model", fleet.MODEL]
        backend = procs.start("backends", [*cmd, "--ports", *map(str, ports)], 0, work)
        stack.callback(procs.stop, backend)
        procs.wait_log(backend, "READY", 30.0)
        config = fleet.write_files(work, procs.free_port(), ports)
        proxies: list[str | None] = [*a.src, *([] if a.no_bare else ["bare"])]
        rows = []
        for i, src in enumerate(proxies):
            out = work / f"calls-{i}.json"
            if src == "bare":
                env = _hooked(fleet.environment(None), out)
                proc, target, _ = baselines.start_bare(stack, work, 1, ports, fleet.MODEL, env)
                name = "bare proxy"
            else:
                env = _hooked(fleet.environment(src), out)
                gateway = fleet.start_gateway(stack, work, config, f"gateway{i}", src, env)
                proc, target = gateway.proc, gateway.target
                name = f"gateway ({src or 'installed'})"
            events, functions = _count(proc, target, out, a)
            rows.append((name, events["call"], events["c_call"]))
            if a.top:
                print(f"\n{name}: the {a.top} functions called most, per request")
                for where, n in functions.most_common(a.top):
                    print(f"{n:9.2f}  {where}")
        kind = "streamed" if a.stream else "non-streamed"
        print(f"\n{a.requests} sequential {kind} requests after {WARM_UP} to warm up,")
        print("net of the same time with no traffic")
        print(f"{'proxy':48s} {'Python calls/req':>17s} {'C calls/req':>12s}")
        for name, py, c in rows:
            print(f"{name:48s} {py:17.1f} {c:12.1f}")


if __name__ == "__main__":
    main()
