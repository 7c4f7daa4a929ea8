"""Between the decision and the forwarding: what a request gets when its group is saturated.

:meth:`FlowGate.admit` takes the request's first decision and returns the decision to forward
on (or the one whose error the router answers): routed at once when there is room and nobody
waits; downgraded below the floor when the group allows it; else queued
(:class:`~quantroute.flow.control.FlowControl`) until a backend has room. A decision that cannot
route for a reason waiting does not clear (unknown model, too long, all down) passes straight
through, as does everything with ``on_saturation: reject``.
"""

from __future__ import annotations

from starlette.types import Receive

from quantroute.config import GatewayConfig
from quantroute.core.filters import request_kv_tokens
from quantroute.core.model import Decision, LatencyClass, Outcome, RequestFeatures, Snapshot
from quantroute.errors import QueueRefused
from quantroute.flow.control import FlowControl
from quantroute.flow.settings import OnSaturation
from quantroute.router import Router


class FlowGate:
    def __init__(self, config: GatewayConfig, router: Router, flow: FlowControl) -> None:
        self.config = config
        self.router = router
        self.flow = flow
        default = config.policy.flow_control.on_saturation
        self._modes: dict[str, OnSaturation] = {
            g.name: g.on_saturation or default for g in config.groups
        }
        self._default = default

    def mode(self, group: str) -> OnSaturation:
        return self._modes.get(group, self._default)

    def may_queue(self, decision: Decision, features: RequestFeatures) -> bool:
        """Whether :meth:`admit` may hold this request (or downgrade it): its group is
        saturated, or others already wait there, and its mode is not ``reject``. False: admit
        returns ``decision`` at once (the trail records a queue phase only when this is True)."""
        group = decision.group or features.model
        if self.mode(group) == "reject":
            return False
        if decision.outcome is Outcome.ROUTED:
            return self.flow.busy(group)
        return decision.saturated

    async def admit(
        self, decision: Decision, features: RequestFeatures, receive: Receive, priority: int = 0
    ) -> Decision:
        if not self.may_queue(decision, features):
            return decision
        group = decision.group or features.model
        mode = self.mode(group)
        if decision.outcome is not Outcome.ROUTED:
            downgraded = self._downgrade(features, mode, None)
            if downgraded is not None:
                return self._noted(downgraded, group)
        try:
            decision = await self.flow.wait(
                group,
                lambda snapshot: self._attempt(features, mode, snapshot),
                receive,
                kv_tokens=request_kv_tokens(features, self.config.policy),
                batch=features.latency_class is LatencyClass.BATCH,
                priority=priority,
            )
        except QueueRefused as exc:
            self.router.telemetry.requests.inc(("none", group, str(exc.status)))
            raise
        return self._noted(decision, group)

    def _attempt(
        self, features: RequestFeatures, mode: OnSaturation, snapshot: Snapshot
    ) -> Decision | None:
        """A queued request's decision now: routed, downgraded, None while saturated, or a
        failure waiting cannot clear."""
        decision = self.router.decide(features, dry_run=True, snapshot=snapshot)
        if decision.outcome is Outcome.ROUTED or not decision.saturated:
            return decision
        return self._downgrade(features, mode, snapshot)

    def _downgrade(
        self, features: RequestFeatures, mode: OnSaturation, snapshot: Snapshot | None
    ) -> Decision | None:
        """Interactive only, where the group allows it: the best variant below the floor."""
        if mode != "downgrade" or features.latency_class is not LatencyClass.INTERACTIVE:
            return None
        decision = self.router.decide(features, dry_run=True, snapshot=snapshot, downgrade=True)
        return decision if decision.outcome is Outcome.ROUTED else None

    def _noted(self, decision: Decision, group: str) -> Decision:
        if decision.downgraded and decision.chosen is not None:
            self.flow.metrics.downgraded.labels(group, decision.chosen).inc()
        return decision
