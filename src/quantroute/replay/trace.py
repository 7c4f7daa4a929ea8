"""A trace to replay: one row per request, features only (no prompt text).

Two JSONL formats are read. The routing benchmark's (``t`` = arrival in seconds from the start,
``task``, ``prompt_tokens``, ``max_tokens``, ``output_tokens``; optional ``model``,
``latency_class``, ``tier``) and the gateway's decision log (``ts`` = Unix seconds,
``completion_tokens`` when it was answered; see :mod:`quantroute.decisionlog.record`). Rows
are sorted by arrival and made to start at 0. A decision-log request that was not answered in
full has no known answer length (``output_tokens`` None: the simulated engine draws one from its
seeded distribution); embeddings, score and rerank requests are skipped (the replay routes
generation).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from quantroute.config import POOLING_APIS, TASK_TYPES, TaskType
from quantroute.core.model import LatencyClass
from quantroute.decisionlog.record import SCHEMA
from quantroute.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TraceRow:
    id: str
    t: float
    """Arrival, simulated seconds from the start of the trace."""
    task: TaskType
    prompt_tokens: int
    max_tokens: int
    output_tokens: int | None = None
    """The answer's length; None: unknown (the engine draws one)."""
    latency_class: LatencyClass = LatencyClass.INTERACTIVE
    model: str = "auto"
    """What the client asked for: a group, or a backend's name."""
    tier: str = "standard"

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["latency_class"] = self.latency_class.value
        return {k: v for k, v in row.items() if v is not None}


def _task(value: object, where: str) -> TaskType:
    for task in TASK_TYPES:
        if value == task:
            return task
    raise ConfigError(f"{where}: unknown task {value!r} (one of {', '.join(TASK_TYPES)})")


def _from_log(obj: dict[str, Any], where: str, default_max: int) -> TraceRow | None:
    if obj.get("api") in POOLING_APIS or int(obj.get("schema", SCHEMA)) > SCHEMA:
        return None
    answered = obj.get("status") == 200 and obj.get("completion_tokens") is not None
    return TraceRow(
        id=str(obj.get("request_id") or where),
        t=float(obj["ts"]),
        task=_task(obj.get("task", "chat"), where),
        prompt_tokens=max(1, int(obj["prompt_tokens"])),
        max_tokens=int(obj.get("max_tokens") or default_max),
        output_tokens=max(1, int(obj["completion_tokens"])) if answered else None,
        latency_class=LatencyClass(obj.get("latency_class", "interactive")),
        model=str(obj.get("model") or "auto"),
    )


def _from_trace(obj: dict[str, Any], where: str, default_max: int) -> TraceRow:
    output = obj.get("output_tokens")
    return TraceRow(
        id=str(obj.get("id") or where),
        t=float(obj["t"]),
        task=_task(obj.get("task", "chat"), where),
        prompt_tokens=max(1, int(obj["prompt_tokens"])),
        max_tokens=int(obj.get("max_tokens") or default_max),
        output_tokens=None if output is None else max(1, int(output)),
        latency_class=LatencyClass(obj.get("latency_class", "interactive")),
        model=str(obj.get("model") or "auto"),
        tier=str(obj.get("tier") or "standard"),
    )


def parse_rows(lines: Iterable[str], source: str, default_max_tokens: int = 256) -> list[TraceRow]:
    rows: list[TraceRow] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj = json.loads(line)
            row = (
                _from_log(obj, where, default_max_tokens)
                if "ts" in obj and "t" not in obj
                else _from_trace(obj, where, default_max_tokens)
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: not a trace row: {exc}") from None
        if row is not None:
            rows.append(row)
    if not rows:
        raise ConfigError(f"{source}: no request to replay")
    rows.sort(key=lambda r: (r.t, r.id))
    start = rows[0].t
    return [replace(r, t=round(r.t - start, 6)) for r in rows]


def _lines(paths: Iterable[Path]) -> Iterator[str]:
    for path in paths:
        try:
            with path.open(encoding="utf-8") as fh:
                yield from fh
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def load_trace(*paths: Path, default_max_tokens: int = 256) -> list[TraceRow]:
    """Rows of one or more files (a rotated log: ``log.jsonl.2 log.jsonl.1 log.jsonl``)."""
    return parse_rows(_lines(paths), ", ".join(map(str, paths)), default_max_tokens)


def save_trace(path: Path, rows: Iterable[TraceRow]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row.to_json(), separators=(",", ":")) + "\n")
