"""The decision log's writer: a bounded queue, one background thread, size-based rotation.

The request path only puts a finished line on a ``queue.Queue`` of ``queue_size``; when it is
full (a stalled disk) the record is dropped and counted, never waited for. A thread takes
whatever has queued up and writes it through the standard library's ``RotatingFileHandler``
(``max_bytes``, ``backups``). The thread starts with the first record and ends by itself after
``idle_s`` without one (it is not a daemon: an exiting process first writes what has queued);
:meth:`DecisionLogWriter.close` writes the rest and stops it.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from quantroute.config import DecisionLogConfig

HandlerFactory = Callable[[], logging.Handler]
IDLE_S = 1.0
BLOCK = 256
"""Most lines written per handler call."""


def rotating_handler(config: DecisionLogConfig) -> HandlerFactory:
    def make() -> logging.Handler:
        Path(config.path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            config.path,
            maxBytes=config.max_bytes,
            backupCount=config.backups,
            encoding="utf-8",
            delay=True,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler

    return make


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("quantroute.decisionlog", logging.INFO, "", 0, message, None, None)


class DecisionLogWriter:
    def __init__(
        self,
        config: DecisionLogConfig,
        *,
        handler: HandlerFactory | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        self._make_handler = handler or rotating_handler(config)
        self._queue: queue.Queue[str | None] = queue.Queue(config.queue_size)
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        """Records not written because the queue was full."""
        self.written = 0

    def submit(self, line: str) -> bool:
        """Queue one line; False (and counted in ``dropped``) when the queue is full."""
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            return False
        self._ensure_thread()
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what has queued and stop the thread (a later ``submit`` starts it again)."""
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                return
            self._queue.put(None)
        thread.join(timeout_s)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="quantroute-decision-log", daemon=False
            )
            self._thread.start()

    def _run(self) -> None:
        handler = self._make_handler()
        try:
            while self._drain(handler):
                pass
        finally:
            handler.close()

    def _drain(self, handler: logging.Handler) -> bool:
        """Write one block; False when the thread should end (idle, or told to stop)."""
        try:
            first = self._queue.get(timeout=self._idle_s)
        except queue.Empty:
            with self._lock:  # nothing came: end, unless a submit raced in just now
                if self._queue.empty():
                    self._thread = None
                    return False
            return True
        lines = [first]
        while len(lines) < BLOCK:
            try:
                lines.append(self._queue.get_nowait())
            except queue.Empty:
                break
        stop = None in lines
        for line in lines:
            if line is not None:
                handler.emit(_record(line))
                self.written += 1
        if stop:
            with self._lock:
                self._thread = None
        return not stop
