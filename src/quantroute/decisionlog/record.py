"""One decision-log record: what the router saw and did for one request, and how it ended.

Features and outcome only: the API, the model or group asked for, the task type and latency
class the gateway inferred, the prompt's *estimated size* and ``max_tokens``, the decision
(backend, variant, why, the rejected backends' filter names), the status, time to first token,
duration and token counts. Never the prompt, the answer, a session id or a key: every field is a
number, a name from the gateway's own config, or one of the gateway's own enumerations, so a log
can leave the machine without carrying what users wrote.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from quantroute.core.model import Decision, RequestFeatures

if TYPE_CHECKING:
    from quantroute.proxy.context import RequestContext

SCHEMA = 1
"""Bumped when a field changes meaning; readers skip records of a newer schema."""
GATEWAY_ERROR = 502
"""The status of a request every attempt of which was given up before its first byte."""
STATUS_BY_OUTCOME = {"no_backend": 503, "too_long": 400}


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    ts: float
    """When the request was routed: Unix seconds (wall clock)."""
    request_id: str
    api: str
    model: str
    group: str | None
    task: str
    latency_class: str
    prompt_tokens: int
    """The gateway's estimate (what the router decided on), not the backend's count."""
    max_tokens: int | None
    stream: bool
    outcome: str
    """``routed``, ``no_backend`` or ``too_long`` (the core's ``Outcome``)."""
    backend: str | None
    variant: str | None
    reason: str
    """Why this backend: ``scored`` (best score), ``relaxed:<filter>,...`` (a soft filter or the
    quality floor was relaxed to find one), or the outcome when nothing was chosen."""
    score: float | None
    candidates: int
    """Backends admitted by the filters (and so scored)."""
    rejected: dict[str, list[str]] = field(default_factory=dict)
    """Backend id -> the filters that turned it away (names, never details)."""
    status: int = 200
    ttft_s: float | None = None
    """From dispatch to the answering backend's first byte (retries included); None when no
    byte came."""
    duration_s: float | None = None
    completion_tokens: int | None = None
    backend_prompt_tokens: int | None = None
    """Prompt tokens as the backend counted them (usage); None when it reported none."""
    attempts: int = 0
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def _reason(decision: Decision) -> str:
    if decision.chosen is None:
        return decision.outcome.value
    if decision.relaxed:
        return "relaxed:" + ",".join(decision.relaxed)
    return "scored"


def _base(
    features: RequestFeatures, decision: Decision, ts: float, request_id: str
) -> dict[str, Any]:
    chosen = decision.chosen
    score = decision.scores[chosen].total if chosen in decision.scores else None
    return {
        "ts": round(ts, 6),
        "request_id": request_id,
        "api": features.api,
        "model": features.model,
        "group": decision.group,
        "task": features.task,
        "latency_class": features.latency_class.value,
        "prompt_tokens": features.prompt_tokens,
        "max_tokens": features.max_tokens,
        "stream": features.stream,
        "outcome": decision.outcome.value,
        "backend": chosen,
        "reason": _reason(decision),
        "score": None if score is None else round(score, 4),
        "candidates": len(decision.scores),
        "rejected": {b: [r.filter for r in rs] for b, rs in decision.rejected.items()},
    }


def refused(
    features: RequestFeatures, decision: Decision, *, ts: float, request_id: str = ""
) -> DecisionRecord:
    """A request the router answered itself (503 no backend, 400 too long): no attempt."""
    status = STATUS_BY_OUTCOME.get(decision.outcome.value, 503)
    return DecisionRecord(**_base(features, decision, ts, request_id), variant=None, status=status)


def settled(ctx: RequestContext, *, wall_now: float, now: float) -> DecisionRecord | None:
    """The record of a routed request that is over; ``now`` is on the in-flight account's clock,
    ``wall_now`` the same moment in Unix seconds. None when it was never routed."""
    decision = ctx.decision
    if decision is None or decision.chosen is None or not ctx.attempts:
        return None
    first, last = ctx.attempts[0], ctx.attempts[-1]
    answered = next((a for a in reversed(ctx.attempts) if a.status is not None), None)
    started = first.lease.dispatched_at
    first_byte = answered.lease.first_byte_at if answered is not None else None
    usages = [a.usage for a in ctx.attempts if a.usage is not None]
    base = _base(ctx.features, decision, wall_now - (now - started), ctx.request_id)
    base["backend"] = last.backend_id  # a retry or continuation ends elsewhere
    return DecisionRecord(
        **base,
        variant=last.backend.variant_id,
        status=answered.status if answered is not None and answered.status else GATEWAY_ERROR,
        ttft_s=None if first_byte is None else round(first_byte - started, 6),
        duration_s=round(now - started, 6),
        completion_tokens=sum(u.completion_tokens for u in usages) if usages else None,
        backend_prompt_tokens=sum(u.prompt_tokens for u in usages) if usages else None,
        attempts=len(ctx.attempts),
    )
