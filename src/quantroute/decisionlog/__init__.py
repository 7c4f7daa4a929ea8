"""The decision log: per request, what the router saw and did and how it ended, as JSONL.

Off unless ``decision_log`` is configured. The router calls :meth:`DecisionLog.refused` for a
request it answers itself (503, 400) and :meth:`DecisionLog.settled` once a routed request is over
(answered, failed or abandoned: the request context's ``done``). The record is built on the
request path (a few dozen field reads) and written by :class:`~.writer.DecisionLogWriter`'s thread.
``quantroute tune`` reads the file back as a trace (:mod:`quantroute.replay.trace`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from quantroute.base import Clock
from quantroute.config import DecisionLogConfig
from quantroute.core.model import Decision, RequestFeatures
from quantroute.decisionlog import record
from quantroute.decisionlog.record import DecisionRecord
from quantroute.decisionlog.writer import DecisionLogWriter, HandlerFactory

if TYPE_CHECKING:
    from quantroute.proxy.context import RequestContext

__all__ = ["DecisionLog", "DecisionLogWriter", "DecisionRecord"]


class DecisionLog:
    def __init__(
        self,
        config: DecisionLogConfig,
        clock: Clock,
        *,
        wall: Callable[[], float] = time.time,
        handler: HandlerFactory | None = None,
    ) -> None:
        """``clock`` is the in-flight account's (the leases' dispatch and first-byte times)."""
        self.writer = DecisionLogWriter(config, handler=handler)
        self._clock = clock
        self._wall = wall

    def refused(self, features: RequestFeatures, decision: Decision, request_id: str = "") -> None:
        row = record.refused(features, decision, ts=self._wall(), request_id=request_id)
        self.writer.submit(row.to_json())

    def settled(self, ctx: RequestContext) -> None:
        row = record.settled(ctx, wall_now=self._wall(), now=self._clock())
        if row is not None:
            self.writer.submit(row.to_json())

    def close(self) -> None:
        self.writer.close()
