"""py-spy profile of the gateway process, summarised as own/total % per frame and per component.

``py-spy record --format raw`` writes collapsed stacks (``root;...;leaf count``). Idle samples
(the loop waiting in epoll) are left out, so percentages are shares of the gateway's *busy* time.
Own % counts samples whose leaf is the frame (time in that function itself, including C calls it
makes such as a socket send); total % counts samples with the frame anywhere on the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
STDLIB = sysconfig.get_paths()["stdlib"]
# First match wins; checked against the full file name.
_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("/quantroute/server/", "quantroute.server (handlers, gateway, parse)"),
    ("/quantroute/proxy/", "quantroute.proxy (upstream, relay)"),
    ("/quantroute/core/", "quantroute.core (decide, request features)"),
    ("/quantroute/state/", "quantroute.state (store, scraper)"),
    ("/quantroute/access/", "quantroute.access (keys, quotas, middleware)"),
    ("/limits/", "limits (quota counting)"),
    ("/quantroute/", "quantroute (other: telemetry, config)"),
    ("/prometheus_client/", "prometheus_client"),
    ("/fastapi/", "fastapi"),
    ("/starlette/", "starlette"),
    ("/uvicorn/", "uvicorn (httptools protocol)"),
    ("/aiohttp/", "aiohttp (upstream client)"),
    ("/httpx/", "httpx/httpcore (scraper)"),
    ("/httpcore/", "httpx/httpcore (scraper)"),
    ("/anyio/", "anyio (Starlette's streaming task group, httpx)"),
    ("/sniffio/", "anyio (Starlette's streaming task group, httpx)"),
    ("/pydantic", "pydantic"),
    ("/uvloop/", "uvloop"),
    (STDLIB + "/asyncio/", "asyncio (stdlib)"),
    (STDLIB + "/json/", "json (stdlib)"),
    (STDLIB + "/", "other stdlib"),
)


@dataclass(frozen=True)
class Profile:
    samples: int
    own: list[tuple[str, float]]
    total: list[tuple[str, float]]
    quantroute_total: list[tuple[str, float]]
    component_own: list[tuple[str, float]]
    component_total: list[tuple[str, float]]


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy not found: pip install -r benchmarks/overhead/requirements.txt")
    return found


async def record(pid: int, duration_s: int, rate: int, output: Path, cpu: int) -> str:
    """Run py-spy (pinned to ``cpu``) against ``pid``; returns its stderr (for the log)."""
    cmd = [
        *("taskset", "-c", str(cpu), py_spy(), "record", "--pid", str(pid)),
        *("--duration", str(duration_s), "--rate", str(rate), "--format", "raw"),
        *("--function", "--full-filenames", "--output", str(output)),
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), duration_s + 30)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    return err.decode(errors="replace")


def component(filename: str) -> str:
    for marker, name in _COMPONENTS:
        if marker in filename:
            return name
    return "other"


def short(frame: str) -> str:
    """``func (path:line)`` with the path cut to its package part."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for cut in ("site-packages/", "src/", STDLIB + "/"):
        if cut in path:
            path = path.split(cut, 1)[1]
            break
    line = f":{match['line']}" if match["line"] else ""
    return f"{match['func']} ({path}{line})"


def _file(frame: str) -> str:
    match = _FRAME.match(frame)
    return match["file"] if match else frame


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def analyse(text: str, top: int = 15) -> Profile:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    comp_own: Counter[str] = Counter()
    comp_total: Counter[str] = Counter()
    samples = 0
    for frames, count in parse_raw(text):
        samples += count
        own[frames[-1]] += count
        comp_own[component(_file(frames[-1]))] += count
        for frame in set(frames):
            total[frame] += count
        for name in {component(_file(f)) for f in frames}:
            comp_total[name] += count

    def pct(counter: Counter[str], n: int | None) -> list[tuple[str, float]]:
        return [(k, 100.0 * v / max(samples, 1)) for k, v in counter.most_common(n)]

    # Frames on (nearly) every stack are the process's entry points: no information.
    inner = Counter({k: v for k, v in total.items() if v < 0.99 * samples})
    ours = Counter({k: v for k, v in inner.items() if "/quantroute/" in _file(k)})
    return Profile(
        samples=samples,
        own=[(short(k), v) for k, v in pct(own, top)],
        total=[(short(k), v) for k, v in pct(inner, top)],
        quantroute_total=[(short(k), v) for k, v in pct(ours, top + 5)],
        component_own=pct(comp_own, None),
        component_total=pct(comp_total, None),
    )
