"""Processes of the benchmark: start pinned, in their own process group; stop for sure
(:mod:`quantroute.testing.procs`, shared with the routing benchmark).

Also the small ``/proc`` readers the benchmark needs (RSS, CPU time, per-core busy time).
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from quantroute.testing.procs import Child, free_port, quantroute_command, stop
from quantroute.testing.procs import cpu_seconds as common_cpu_seconds
from quantroute.testing.procs import start as start_child

__all__ = ["Child", "Proc", "free_port", "quantroute_command", "stop"]

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
Proc = Child


def start(
    name: str, cmd: Sequence[str], cpu: int, log_dir: Path, env: dict[str, str] | None = None
) -> Child:
    """Start ``cmd`` under ``taskset -c cpu`` in a new session (its own process group)."""
    return start_child(name, cmd, log_dir, cpu=cpu, env=env)


def log_tail(proc: Child, lines: int = 20) -> str:
    return proc.tail(lines)


def wait_log(proc: Proc, marker: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{log_tail(proc)}")
        if marker in proc.log_path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready after {timeout_s}s:\n{log_tail(proc)}")


def wait_http(proc: Proc, url: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200 (bounded by ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{log_tail(proc)}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: {url} not ready after {timeout_s}s:\n{log_tail(proc)}")


def export_ref(ref: str, into: Path) -> tuple[Path, str]:
    """``git archive <ref> src`` of this repository into ``into``: (its src dir, short commit)."""
    repo = HERE.parent.parent
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", ref],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", commit, "src"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
    return into / "src", commit


# -- /proc readers -------------------------------------------------------------------------------
def status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (seconds); the process must still be there."""
    seconds = common_cpu_seconds(pid)
    if seconds is None:
        raise ProcessLookupError(pid)
    return seconds


def core_times() -> dict[str, tuple[float, float]]:
    """Per-core (busy, steal) seconds from /proc/stat, keyed ``cpu0``, ``cpu1``..."""
    result: dict[str, tuple[float, float]] = {}
    with open("/proc/stat") as fh:
        for line in fh:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            v = [int(x) for x in values]
            idle = v[3] + v[4]
            steal = v[7] if len(v) > 7 else 0
            result[name] = ((sum(v[:8]) - idle - steal) / CLK_TCK, steal / CLK_TCK)
    return result


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Pin this process to ``cpu`` for the block (the load generator lives here)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield None
    finally:
        os.sched_setaffinity(0, before)
