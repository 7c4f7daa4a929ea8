"""Child processes of the benchmark: the simulated fleet and the gateway, each in its own session.

Both listen on 127.0.0.1 only; ``stop`` sends SIGTERM to the child's process group, waits, and
kills it if it does not leave in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PACKAGE_DIR = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 15.0


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def cpu_seconds(child: Child) -> float | None:
    """utime + stime of the child (its own threads; None once it is gone)."""
    try:
        with open(f"/proc/{child.popen.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def quantroute_command() -> list[str]:
    """``quantroute`` of this interpreter's environment (else ``python -m quantroute.cli``)."""
    script = Path(sys.executable).parent / "quantroute"
    if script.exists():
        return [str(script)]
    found = shutil.which("quantroute")
    return [found] if found else [sys.executable, "-m", "quantroute.cli"]


def start(name: str, cmd: Sequence[str], log_dir: Path, *, stdout_pipe: bool = False) -> Child:
    log_path = log_dir / f"{name}.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PACKAGE_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(cmd),
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return Child(name, popen, log_path)


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


def stop(child: Child) -> int | None:
    if child.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.popen.pid, signal.SIGTERM)
        try:
            child.popen.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.popen.pid, signal.SIGKILL)
            child.popen.wait(STOP_GRACE_S)
    if child.popen.stdout is not None:
        child.popen.stdout.close()
    return child.popen.returncode


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


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        stop(child)


def fleet_command(
    time_scale: float,
    seed: int,
    answer_key: Path | None,
    stats: Path,
    kv_blocks: Mapping[str, int] | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "routingbench.fleet_proc", "--time-scale", str(time_scale)]
    cmd += ["--seed", str(seed), "--stats", str(stats)]
    for backend, blocks in (kv_blocks or {}).items():
        cmd += ["--kv-blocks", f"{backend}={blocks}"]
    return cmd + (["--answer-key", str(answer_key)] if answer_key is not None else [])
