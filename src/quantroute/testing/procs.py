"""Child processes for tests and benchmarks: started in their own session, logged, stopped for sure.

Everything listens on 127.0.0.1 only. :func:`stop` sends SIGTERM to the child's process group,
waits, and SIGKILLs the group if it has not left in time; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Racy: another process can take it before the server binds it. A uvicorn server (``quantroute
    serve``, the simulator) should rather bind port 0 and be read back with :func:`bound_port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# uvicorn logs the port it really bound when it was asked for port 0
_UVICORN_LISTENING = re.compile(rb"Uvicorn running on https?://\S+?:(\d+) ")


def bound_port(log_path: Path, popen: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """The port a uvicorn server started with ``--port 0`` bound, from its first "Uvicorn running
    on" line in ``log_path``: the kernel picked it and the server holds it, so no other process
    can take it in between (the race :func:`free_port` has). Raises AssertionError with the log
    when the process exits or ``timeout_s`` passes without the line."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = _UVICORN_LISTENING.search(log_path.read_bytes())
        except FileNotFoundError:
            found = None
        if found is not None:
            return int(found.group(1))
        exited = popen.poll() is not None
        if exited or time.monotonic() >= deadline:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            why = f"exited with {popen.returncode}" if exited else f"not listening in {timeout_s} s"
            raise AssertionError(f"{popen.args!r}: {why}\n{text[-3000:]}")
        time.sleep(0.05)


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of its log ("" when there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def quantroute_command() -> list[str]:
    """``quantroute`` of this interpreter's environment (else ``python -m quantroute.cli``)."""
    script = Path(sys.executable).parent / "quantroute"
    if script.exists():
        return [str(script)]
    found = shutil.which("quantroute")
    return [found] if found else [sys.executable, "-m", "quantroute.cli"]


def start(
    name: str,
    cmd: Sequence[str],
    log_dir: Path,
    *,
    cpu: int | None = None,
    env: Mapping[str, str] | None = None,
    stdout_pipe: bool = False,
) -> Child:
    """Start ``cmd`` in a new session, output to ``log_dir/<name>.log`` (stdout to a pipe when
    ``stdout_pipe``), pinned to core ``cpu`` with ``taskset`` when given."""
    log_path = log_dir / f"{name}.log"
    argv = ["taskset", "-c", str(cpu), *cmd] if cpu is not None else list(cmd)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log if stdout_pipe else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
    return Child(name, popen, log_path)


def stop(child: Child, grace_s: float = STOP_GRACE_S) -> int | None:
    """SIGTERM the child's process group, wait, then SIGKILL it. Returns the exit code."""
    if child.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.popen.wait(grace_s)
    if child.popen.stdout is not None:
        child.popen.stdout.close()
    return child.popen.returncode


def start_on_free_ports(
    launch: Callable[[], Child],
    up: Callable[[Child], bool],
    *,
    attempts: int = 3,
    timeout_s: float = 30.0,
) -> Child:
    """Start a server that must be handed its ports (several, or not uvicorn's one that logs
    what port 0 became): ``launch`` picks them with :func:`free_port` and starts the child; wait
    until ``up(child)``. When the child exits because a port was taken in between ("address
    already in use"), it is started again on fresh ports, ``attempts`` times in all; any other
    failure raises AssertionError with its log."""
    for attempt in range(1, attempts + 1):
        child = launch()
        deadline = time.monotonic() + timeout_s
        while child.popen.poll() is None and time.monotonic() < deadline:
            if up(child):
                return child
            time.sleep(0.1)
        stop(child)
        taken = "address already in use" in child.tail(200).lower()
        if not taken or attempt == attempts:
            why = f"exited with {child.popen.returncode}" if taken else "did not come up"
            raise AssertionError(f"{child.name} {why}:\n{child.tail()}")
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    """Stop ``child`` when the block ends, however it ends."""
    try:
        yield child
    finally:
        stop(child)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (its own threads; None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
