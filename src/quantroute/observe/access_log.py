"""The access log: one JSON line per request, written by a thread, never by the event loop.

The request path only puts the finished :class:`~quantroute.observe.record.RequestRecord` on a
bounded queue (``put_nowait``); the standard library's ``QueueListener`` thread turns it into JSON
and hands it to a ``RotatingFileHandler`` (size-based rotation, ``backup_count`` old files) or a
stream handler on stdout (``path: "-"``, for a cluster's log collector; the gateway's own log
lines go to stderr). A full queue (a stalled disk) drops records and counts them instead of
blocking requests.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable
from pathlib import Path

from quantroute.config import AccessLogConfig
from quantroute.errors import ConfigError
from quantroute.observe.record import RequestRecord

STDOUT = "-"


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        request: RequestRecord = record.msg  # type: ignore[assignment]
        return json.dumps(request.as_dict(), separators=(",", ":"), ensure_ascii=False)


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


class AccessLog:
    """``start()`` opens the file and the writer thread; ``stop()`` drains and closes both."""

    def __init__(self, config: AccessLogConfig, on_drop: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(config.queue_size)
        self._on_drop = on_drop
        self._listener: logging.handlers.QueueListener | None = None
        self._handler: logging.Handler | None = None

    def start(self) -> None:
        handler = _handler(self.config)
        handler.setFormatter(_JsonLines())
        self._handler = handler
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._listener.start()

    def write(self, record: RequestRecord) -> None:
        entry = logging.LogRecord("quantroute.access", logging.INFO, "", 0, record, None, None)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._on_drop()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()  # writes what is queued, then joins the thread
            self._listener = None
        if self._handler is not None:
            self._handler.close()
            self._handler = None
