"""The access log: one JSON line per request, written by a thread, never by the event loop.

The request path only puts the finished :class:`~quantroute.observe.record.RequestRecord` on a
queue (a C ``SimpleQueue``: no lock taken in Python). A writer thread takes whatever has queued
up, turns it into JSON lines and writes them as one block through a standard library handler: a
``RotatingFileHandler`` (size-based rotation, ``backup_count`` old files) or a stream handler on
stdout (``path: "-"``, for a cluster's log collector; the gateway's own log lines go to stderr).
One write and one flush per block, not per line: under load that is most of the writer's cost.
More than ``queue_size`` records waiting (a stalled disk) drops records and counts them instead
of blocking requests.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from quantroute.config import AccessLogConfig
from quantroute.errors import ConfigError
from quantroute.observe.record import RequestRecord

STDOUT = "-"
BLOCK = 512
"""Most records written in one block."""
_STOP = object()


def _handler(config: AccessLogConfig) -> logging.Handler:
    if config.path == STDOUT:
        return logging.StreamHandler(sys.stdout)
    path = Path(config.path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return logging.handlers.RotatingFileHandler(
            path, maxBytes=config.max_bytes, backupCount=config.backup_count, encoding="utf-8"
        )
    except OSError as exc:
        raise ConfigError(f"access_log.path: cannot open {path}: {exc.strerror}") from None


def _line(record: RequestRecord) -> str:
    return json.dumps(record.as_dict(), separators=(",", ":"), ensure_ascii=False)


def _chunks(lines: list[str], limit: int) -> list[list[str]]:
    """``lines`` in runs of at most ``limit`` bytes (0: one run), so a rotated file stays near
    ``max_bytes`` (a single longer line still goes whole)."""
    if not limit:
        return [lines] if lines else []
    chunks: list[list[str]] = []
    size = limit + 1
    for line in lines:
        if size + len(line) + 1 > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += len(line) + 1
    return chunks


class AccessLog:
    """``start()`` opens the file and the writer thread; ``stop()`` drains and closes both."""

    def __init__(self, config: AccessLogConfig, on_drop: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._on_drop = on_drop
        self._thread: threading.Thread | None = None
        self._handler: logging.Handler | None = None

    def start(self) -> None:
        self._handler = _handler(self.config)
        self._thread = threading.Thread(target=self._run, name="quantroute-access-log", daemon=True)
        self._thread.start()

    def write(self, record: RequestRecord) -> None:
        if self._queue.qsize() >= self.config.queue_size:
            self._on_drop()
            return
        self._queue.put(record)

    def _run(self) -> None:
        assert self._handler is not None
        stopping = False
        while not stopping:
            block = [self._queue.get()]
            while len(block) < BLOCK:
                try:
                    block.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = _STOP in block
            lines = [_line(r) for r in block if isinstance(r, RequestRecord)]
            for chunk in _chunks(lines, self.config.max_bytes):
                # the handler adds the last newline, rotates if needed, flushes once per chunk
                self._handler.handle(logging.makeLogRecord({"msg": "\n".join(chunk)}))

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)  # after every record already queued
            self._thread.join(30)
            self._thread = None
        if self._handler is not None:
            self._handler.close()
            self._handler = None
