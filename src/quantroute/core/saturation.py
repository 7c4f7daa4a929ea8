"""Saturation, as flow control sees it: pure functions over a decision's rejections and a snapshot.

A backend turned away *only* for want of room (every one of its rejections is ``saturated``: the
KV cache at the hard ceiling, vLLM's waiting queue over the ``waiting`` filter's limit) would take
the request once its own requests finish. A request none of whose backends is in that state
(unknown model, too long, all down or ejected, all below the floor) can never be served by
waiting, and is answered at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from quantroute.core.model import Rejection, Snapshot


def only_saturated(rejected: Mapping[str, tuple[Rejection, ...]]) -> bool:
    """Some backend was turned away for saturation alone."""
    return any(reasons and all(r.saturated for r in reasons) for reasons in rejected.values())


def with_dispatched(snapshot: Snapshot, backend_id: str, kv_tokens: int) -> Snapshot:
    """``snapshot`` as if one more request (holding ``kv_tokens``) had been sent to
    ``backend_id``: the gateway's unseen account grows, as it will once the request's lease is
    taken. Flow control dispatches several queued requests on one fresh state without a herd."""
    backends = tuple(
        replace(
            b,
            pending_requests=b.pending_requests + 1,
            pending_kv_tokens=b.pending_kv_tokens + kv_tokens,
        )
        if b.id == backend_id
        else b
        for b in snapshot.backends
    )
    return Snapshot(snapshot.taken_at, backends)
