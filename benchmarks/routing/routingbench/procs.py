"""Child processes of the benchmark: the simulated fleet and the gateway, each in its own session
(:mod:`quantroute.testing.procs`, shared with the overhead benchmark).

Both listen on 127.0.0.1 only; ``stop`` sends SIGTERM to the child's process group, waits, and
kills it if it does not leave in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from quantroute.testing import procs as common
from quantroute.testing.procs import Child, free_port, quantroute_command, running, stop

__all__ = ["Child", "free_port", "quantroute_command", "running", "stop"]

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def cpu_seconds(child: Child) -> float | None:
    """utime + stime of the child (its own threads; None once it is gone)."""
    return common.cpu_seconds(child.pid)


def start(name: str, cmd: Sequence[str], log_dir: Path, *, stdout_pipe: bool = False) -> Child:
    """Start ``cmd`` with this benchmark's package importable (``python -m routingbench...``)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PACKAGE_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    return common.start(name, cmd, log_dir, env=env, stdout_pipe=stdout_pipe)


def read_json_line(child: Child, timeout_s: float) -> dict[str, Any]:
    """The first JSON line the child prints on stdout (bounded by ``timeout_s``)."""
    assert child.popen.stdout is not None
    deadline = time.monotonic() + timeout_s
    buffer = b""
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        ready, _, _ = select.select([child.popen.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(child.popen.stdout.fileno(), 65536)
            buffer += chunk
            if b"\n" in buffer:
                parsed: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
                return parsed
    raise RuntimeError(f"{child.name}: no start-up line after {timeout_s}s:\n{child.tail()}")


def wait_fresh(child: Child, url: str, backends: int, timeout_s: float) -> None:
    """Poll the gateway's /admin/backends until every backend is fresh."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            rows = httpx.get(url + "/admin/backends", timeout=1.0).json()["backends"]
            if len(rows) == backends and all(r["state"] == "fresh" for r in rows):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name}: backends not fresh after {timeout_s}s:\n{child.tail()}")


def fleet_command(
    time_scale: float,
    seed: int,
    answer_key: Path | None,
    stats: Path,
    kv_blocks: Mapping[str, int] | None = None,
    fleet_file: Path | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "routingbench.fleet_proc", "--time-scale", str(time_scale)]
    cmd += ["--seed", str(seed), "--stats", str(stats)]
    if fleet_file is not None:
        cmd += ["--fleet", str(fleet_file)]
    for backend, blocks in (kv_blocks or {}).items():
        cmd += ["--kv-blocks", f"{backend}={blocks}"]
    return cmd + (["--answer-key", str(answer_key)] if answer_key is not None else [])
