"""Child processes for the vLLM tier: started in their own session, logged to a file, stopped.

Every wait here is bounded in time; `ManagedProcess.stop` sends SIGTERM to the leader, then
SIGKILL to the whole process group if it has not exited (vLLM's engine processes share it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from quantroute.testing.procs import free_port

__all__ = ["ManagedProcess", "ProcessFailedError", "free_port", "log_tail"]


class ProcessFailedError(RuntimeError):
    """A managed process exited, or never became healthy, within its time bound."""


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note when it is missing."""
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


@dataclass
class ManagedProcess:
    """A child process in its own session whose stdout and stderr go to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str]
    ) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,
            )
        return cls(name=name, popen=popen, log_path=log_path)

    def failure(self, what: str) -> ProcessFailedError:
        return ProcessFailedError(
            f"{self.name}: {what} (exit code {self.popen.poll()}); log {self.log_path}:\n"
            + log_tail(self.log_path)
        )

    def wait_http_ok(self, url: str, timeout_s: float, interval_s: float = 1.0) -> float:
        """Poll ``url`` until it answers 200; return the seconds waited. Raise on exit/timeout."""
        started = time.monotonic()
        deadline = started + timeout_s
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    raise self.failure(f"exited before {url} answered")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return time.monotonic() - started
                time.sleep(interval_s)
        raise self.failure(f"{url} not healthy after {timeout_s:.0f} s")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the leader, wait up to ``grace_s``, then SIGKILL the process group."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        self._kill_group_leftovers()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5.0)

    def _kill_group_leftovers(self) -> None:
        # Engine processes may outlive the API server briefly; give them a few seconds.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and _group_alive(self.popen.pid):
            time.sleep(0.2)
        if _group_alive(self.popen.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_bounded(
    argv: Sequence[str], timeout_s: float, log_path: Path, env: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """Run ``argv`` to completion within ``timeout_s``; return (exit code, stdout).

    stderr goes to ``log_path``. On timeout the whole process group is killed and -9 returned.
    """
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
        try:
            out, _ = popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()
            return -9, ""
    return popen.returncode, out.decode(errors="replace")
