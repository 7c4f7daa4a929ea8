"""The decision log's writer: rotation by size into N files, a bounded queue that drops (and
counts) instead of blocking, everything written on close."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from quantroute.config import DecisionLogConfig
from quantroute.decisionlog.writer import DecisionLogWriter, rotating_handler


def test_the_file_rotates_at_max_bytes_and_keeps_backups(tmp_path: Path) -> None:
    config = DecisionLogConfig(path=tmp_path / "d.jsonl", max_bytes=4096, backups=2)
    writer = DecisionLogWriter(config)
    lines = [f'{{"n":{i},"pad":"{"x" * 90}"}}' for i in range(400)]  # ~40 KB
    for line in lines:
        assert writer.submit(line)
    writer.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    kept = [
        ln
        for f in ("d.jsonl.2", "d.jsonl.1", "d.jsonl")
        for ln in (tmp_path / f).read_text().splitlines()
    ]
    assert kept == lines[-len(kept) :]  # the newest, in order; the oldest rotated away
    assert writer.written == 400 and writer.dropped == 0


class _Stalled(logging.Handler):
    """A disk that hangs: emit blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.unblock = threading.Event()
        self.entered = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        assert self.unblock.wait(10)
        self.lines.append(record.getMessage())


def test_a_stalled_disk_drops_records_beyond_the_queue_bound(tmp_path: Path) -> None:
    config = DecisionLogConfig(path=tmp_path / "d.jsonl", queue_size=5)
    stalled = _Stalled()
    writer = DecisionLogWriter(config, handler=lambda: stalled)
    assert writer.submit("first")
    assert stalled.entered.wait(5)  # the thread holds "first" inside the stalled write
    accepted = [writer.submit(f"r{i}") for i in range(12)]
    assert accepted == [True] * 5 + [False] * 7
    assert writer.dropped == 7
    stalled.unblock.set()
    writer.close()
    assert stalled.lines == ["first", "r0", "r1", "r2", "r3", "r4"]


def test_the_thread_ends_when_idle_and_starts_again(tmp_path: Path) -> None:
    config = DecisionLogConfig(path=tmp_path / "d.jsonl")
    writer = DecisionLogWriter(config, idle_s=0.05)
    writer.submit("one")
    deadline = threading.Event()
    for _ in range(200):  # bounded: at most 2 s
        if not any(t.name == "quantroute-decision-log" for t in threading.enumerate()):
            break
        deadline.wait(0.01)
    assert not any(t.name == "quantroute-decision-log" for t in threading.enumerate())
    writer.submit("two")
    writer.close()
    assert (tmp_path / "d.jsonl").read_text().splitlines() == ["one", "two"]


def test_the_handler_writes_where_the_config_says(tmp_path: Path) -> None:
    handler = rotating_handler(DecisionLogConfig(path=tmp_path / "sub" / "d.jsonl"))()
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    handler.close()
    assert (tmp_path / "sub").is_dir()
