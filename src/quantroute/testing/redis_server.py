"""A real ``redis-server`` (Debian's package) on a free loopback port, for tests and benchmarks.

No persistence, no config file, bound to 127.0.0.1; :meth:`stop` terminates it (and is what the
context manager calls). Redis cannot be asked for port 0 (that turns TCP off), so the port is
picked free and, when another process takes it first, the start is retried on a fresh one; the
server counts as up only once *its* log says so (a PING could reach the other process). :meth:`pause` / :meth:`resume` freeze the process with SIGSTOP/SIGCONT,
the way a Redis that hangs (rather than refuses) looks to a client.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from quantroute.testing.procs import free_port

INSTALL = "apt-get update && apt-get install -y --no-install-recommends redis-server"


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(f"redis-server is not installed: {INSTALL} (scripts/test does)")
        self.binary = binary
        self.workdir = workdir
        self._fixed_port = port is not None
        self._use(port or free_port())
        self._proc: subprocess.Popen[bytes] | None = None

    def _use(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log = self.workdir / f"redis-{port}.log"

    def start(self, timeout_s: float = 10.0, attempts: int = 5) -> RedisServer:
        """Start and wait until it answers; a port taken meanwhile is retried ``attempts`` times
        on a fresh one (not when the port was given, nor on a restart)."""
        for attempt in range(1, attempts + 1):
            if self._start_once(timeout_s):
                self._fixed_port = True  # the URL is out: a restart keeps it
                return self
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if self._fixed_port or "Address already in use" not in text or attempt == attempts:
                raise RuntimeError(f"redis-server did not start:\n{text[-2000:]}")
            self._use(free_port())
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> bool:
        """True once this process is ready and answers; False when it exited (or timed out)."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.log),
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not (self._ready() and self._answers() and self._proc.poll() is None):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.02)
        return True

    def _ready(self) -> bool:
        """Its own log says it listens (not some other process on the port)."""
        try:
            return b"Ready to accept connections" in self.log.read_bytes()[self._log_from :]
        except FileNotFoundError:
            return False

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
