"""The record of one request: what was asked, what was decided, what each attempt did, how long.

One record is one line of the access log and the source of the trace's attributes. It is also
meant to be the *decision log* the routing work asks for (replaying traffic against another
policy): it keeps the request's routing features and the whole decision (every candidate's
scores and every rejected backend's reasons), not just the winner. A later replay tool adds a
section (e.g. the snapshot the decision saw) under a new key; ``v`` changes only when an existing
field changes meaning.

Never in a record: prompt or completion text, message contents, API keys (a key appears by its
name only) or other headers.
Values are gathered on the hot path as plain Python objects; turning them into JSON happens in
:meth:`RequestRecord.as_dict`, which the access log's writer thread calls.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from quantroute.core.model import Decision, RequestFeatures

SCHEMA_VERSION = 1


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


@dataclass(slots=True)
class AttemptRecord:
    """One try at one backend. ``status`` is the backend's HTTP status, or None when it was
    never reached (``error`` says why) or the client left first."""

    number: int
    backend: str
    variant: str
    started: float
    continuation: bool = False
    """It continued a stream another attempt had started (the prefix sent along)."""
    status: int | None = None
    error: str | None = None
    first_byte: float | None = None
    ended: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.number,
            "continuation": self.continuation,
            "backend": self.backend,
            "variant": self.variant,
            "status": self.status,
            "error": self.error,
            "ttfb_ms": _ms(None if self.first_byte is None else self.first_byte - self.started),
            "ms": _ms(None if self.ended is None else self.ended - self.started),
        }


@dataclass(slots=True)
class RequestRecord:
    """Filled in along the request path; times are ``time.perf_counter()`` readings except
    ``wall_start`` (epoch seconds, for the timestamp)."""

    path: str
    kind: str
    wall_start: float
    started: float
    request_id: str | None = None
    """The access middleware's request id: what the client got in ``x-request-id``."""
    key: str | None = None
    """The caller's API key's name (None when no keys are configured); never the key."""
    trace_id: str | None = None
    span_id: str | None = None
    features: RequestFeatures | None = None
    decision: Decision | None = None
    parse_s: float | None = None
    decide_s: float | None = None
    queue_s: float | None = None
    """How long flow control held the request (None: it never waited in the gateway's queue)."""
    attempts: list[AttemptRecord] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ended: float | None = None
    answered: AttemptRecord | None = None
    """The attempt whose answer went to the client (None: the gateway answered, an error)."""

    def as_dict(self) -> dict[str, Any]:
        last = self.answered
        group = self.decision.group if self.decision is not None else None
        return {
            "v": SCHEMA_VERSION,
            "ts": _timestamp(self.wall_start),
            "request_id": self.request_id,
            "key": self.key,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "path": self.path,
            "kind": self.kind,
            **_features(self.features),
            "outcome": self.decision.outcome.value if self.decision is not None else None,
            "group": group,
            "backend": last.backend if last is not None else None,
            "variant": last.variant if last is not None else None,
            "status": self.status,
            "error": self.error,
            "retries": max(len(self.attempts) - 1, 0),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "timings_ms": self._timings(last),
            "attempts": [a.as_dict() for a in self.attempts],
            "decision": _decision(self.decision),
        }

    def _timings(self, last: AttemptRecord | None) -> dict[str, float | None]:
        first_byte = last.first_byte if last is not None else None
        return {
            "parse": _ms(self.parse_s),
            "decide": _ms(self.decide_s),
            "queue": _ms(self.queue_s),
            "first_byte": _ms(None if first_byte is None else first_byte - self.started),
            "upstream_ttfb": _ms(
                None if first_byte is None or last is None else first_byte - last.started
            ),
            "total": _ms(None if self.ended is None else self.ended - self.started),
        }


def _timestamp(epoch: float) -> str:
    moment = dt.datetime.fromtimestamp(epoch, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _features(f: RequestFeatures | None) -> dict[str, Any]:
    if f is None:
        return {"model": None}
    return {
        "model": f.model,
        "seq": f.sequence,
        "stream": f.stream,
        "task": f.task,
        "latency_class": f.latency_class.value,
        "prompt_tokens_est": f.prompt_tokens,
        "max_tokens": f.max_tokens,
    }


def _decision(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "chosen": d.chosen,
        "ranked": list(d.ranked),
        "scores": {
            backend: {
                "total": round(s.total, 4),
                "parts": {k: round(v, 4) for k, v in s.parts.items()},
            }
            for backend, s in d.scores.items()
        },
        "rejected": {
            backend: [{"filter": r.filter, "detail": r.detail} for r in rejections]
            for backend, rejections in d.rejected.items()
        },
        "relaxed": list(d.relaxed),
        "kv_pressure": list(d.kv_pressure),
        "quality_floor": d.quality_floor,
        "saturated": d.saturated,
    }


def top_scores(d: Decision, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` best candidates and their total scores, best first."""
    ranked = sorted(d.scores.items(), key=lambda item: item[1].total, reverse=True)
    return [(backend, round(s.total, 4)) for backend, s in ranked[:n]]
