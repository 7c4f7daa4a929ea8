"""The access-log writer: JSON lines through a thread, rotation, stdout, a bounded queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantroute.config import AccessLogConfig
from quantroute.core.model import (
    Decision,
    LatencyClass,
    Outcome,
    Rejection,
    RequestFeatures,
    Scores,
)
from quantroute.observe.access_log import AccessLog
from quantroute.observe.record import AttemptRecord, RequestRecord


def _record(n: int) -> RequestRecord:
    rec = RequestRecord("/v1/chat/completions", "chat", wall_start=1_795_000_000.25, started=10.0)
    rec.features = RequestFeatures(
        "auto", 120, 64, stream=True, task="coding", latency_class=LatencyClass.BATCH, sequence=n
    )
    rec.decision = Decision(
        Outcome.ROUTED,
        "a",
        ("a", "b"),
        {"a": Scores(0.91234, {"latency": 0.5}), "b": Scores(0.8, {"latency": 0.4})},
        {"c": (Rejection("kv_ceiling", "0.97 >= 0.95", kv_pressure=True),)},
        group="auto",
        quality_floor=0.5,
    )
    rec.parse_s, rec.decide_s = 0.0001, 0.00005
    first = AttemptRecord(1, "b", "vb", started=10.001, status=500, ended=10.002)
    second = AttemptRecord(2, "a", "va", started=10.002, status=200, first_byte=10.012)
    second.ended = 10.1
    rec.attempts += [first, second]
    rec.answered = second
    rec.status, rec.prompt_tokens, rec.completion_tokens, rec.ended = 200, 118, 30, 10.2
    return rec


def test_record_fields() -> None:
    line = _record(7).as_dict()
    assert line["v"] == 1 and line["ts"] == "2026-11-18T11:06:40.250Z"
    assert (line["model"], line["group"], line["backend"], line["variant"]) == (
        "auto",
        "auto",
        "a",
        "va",
    )
    assert (line["task"], line["latency_class"], line["stream"], line["seq"]) == (
        "coding",
        "batch",
        True,
        7,
    )
    assert (line["status"], line["retries"], line["prompt_tokens"], line["completion_tokens"]) == (
        200,
        1,
        118,
        30,
    )
    assert line["timings_ms"] == {
        "parse": 0.1, "decide": 0.05, "queue": None, "first_byte": 12.0, "upstream_ttfb": 10.0,
        "total": 200.0,
    }  # fmt: skip
    assert [a["status"] for a in line["attempts"]] == [500, 200]
    assert line["attempts"][0]["ttfb_ms"] is None and line["attempts"][1]["ttfb_ms"] == 10.0
    decision = line["decision"]
    assert decision["ranked"] == ["a", "b"] and decision["scores"]["a"]["total"] == 0.9123
    assert decision["rejected"] == {"c": [{"filter": "kv_ceiling", "detail": "0.97 >= 0.95"}]}


def test_lines_go_to_the_file_in_order(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.jsonl"
    log = AccessLog(AccessLogConfig(path=str(path)))
    log.start()
    for n in range(50):
        log.write(_record(n))
    log.stop()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(50))


def test_the_file_rotates(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(AccessLogConfig(path=str(path), max_bytes=4096, backup_count=2))
    log.start()
    for n in range(40):
        log.write(_record(n))
    log.stop()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["access.jsonl", "access.jsonl.1", "access.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    newest = [json.loads(line)["seq"] for line in path.read_text().splitlines()]
    assert newest[-1] == 39


def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog(AccessLogConfig(path="-"))
    log.start()
    log.write(_record(3))
    log.stop()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and json.loads(out[0])["seq"] == 3


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = AccessLog(
        AccessLogConfig(path=str(tmp_path / "a.jsonl"), queue_size=2),
        on_drop=lambda: dropped.append(1),
    )
    for n in range(5):  # the writer thread is not running: nothing drains the queue
        log.write(_record(n))
    assert len(dropped) == 3
    log.start()
    log.stop()
    assert [json.loads(x)["seq"] for x in (tmp_path / "a.jsonl").read_text().splitlines()] == [0, 1]


def test_an_unwritable_path_is_a_config_error(tmp_path: Path) -> None:
    from quantroute.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    log = AccessLog(AccessLogConfig(path=str(blocker / "access.jsonl")))
    with pytest.raises(ConfigError, match=r"access_log\.path: cannot open"):
        log.start()
