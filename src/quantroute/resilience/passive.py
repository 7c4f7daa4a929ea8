"""Passive health as the gateway runs it: the pure state machine plus its clock, metrics and log.

The request path reports every attempt's outcome and latencies here; the store reads
:meth:`PassiveHealthMonitor.state` into each snapshot and :meth:`admin` into ``/admin/backends``.
An ejection is logged once (WARNING) and counted in ``quantroute_ejections_total{backend,reason}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from quantroute.base import Clock
from quantroute.config import BackendConfig, GroupConfig
from quantroute.core.latency import ObservedLatency
from quantroute.core.model import SERVING, PassiveState
from quantroute.resilience.metrics import ResilienceMetrics
from quantroute.resilience.outcomes import AttemptOutcome
from quantroute.resilience.outliers import Ejection, HealthView, PassiveHealth
from quantroute.resilience.settings import OutlierDetection

log = logging.getLogger("quantroute.health")


class PassiveHealthMonitor:
    def __init__(
        self, settings: OutlierDetection, clock: Clock, metrics: ResilienceMetrics
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self.machine = PassiveHealth(settings)

    def configure(
        self,
        settings: OutlierDetection,
        backends: Iterable[BackendConfig],
        groups: Iterable[GroupConfig],
    ) -> None:
        """A new config (or discovery's new backend set): settings, backends and group members."""
        backends = list(backends)
        self.machine.configure(settings)
        variants = {b.id: b.variant_id for b in backends}
        members = {g.name: [b.id for b in backends if b.variant_id in g.variants] for g in groups}
        self.machine.set_topology(variants, members)

    # -- events from the request path ----------------------------------------------------------
    def now(self) -> float:
        """This monitor's time: an attempt notes when it was sent (see :meth:`outcome`)."""
        return self._clock()

    def outcome(
        self,
        backend_id: str,
        outcome: AttemptOutcome,
        retry_after_s: float | None = None,
        sent_at: float | None = None,
    ) -> None:
        """``sent_at``: when the attempt was sent (:meth:`now`), so that a success of a request
        sent before the backend's latest failure does not clear its failure streak."""
        self._metrics.outcomes.inc((backend_id, outcome.value))
        event = self.machine.record(backend_id, outcome, self._clock(), retry_after_s, sent_at)
        self._report(event)

    def latency(
        self,
        backend_id: str,
        *,
        ttft_s: float | None = None,
        per_token_s: float | None = None,
        load: float = 0.0,
        prior_queue_s: float | None = None,
        prior_prefill_s: float | None = None,
    ) -> None:
        """An answered attempt's latencies: the one measurement outlier ejection judges on and
        the latency scorer learns from (``prior_*``: the scorer's expectation at dispatch)."""
        now = self._clock()
        event = self.machine.record_latency(
            backend_id,
            now,
            ttft_s=ttft_s,
            per_token_s=per_token_s,
            load=load,
            prior_queue_s=prior_queue_s,
            prior_prefill_s=prior_prefill_s,
        )
        self._report(event)

    def set_down(self, backend_id: str, down: bool) -> None:
        """Its scrapes fail (or succeed again): a down backend holds no ejection share, so an
        ejection held for want of room may be made now."""
        for event in self.machine.set_down(backend_id, down, self._clock()):
            self._report(event)

    def recovered(self, backend_id: str) -> None:
        """Scrapes succeed again after the backend was down: ramp it up (slow start)."""
        for event in self.machine.recovered(backend_id, self._clock()):
            self._report(event)

    def tick(self) -> None:
        """Bring time-driven changes in: an ejection that ended leaves room for one held back
        (the store calls this once per snapshot; nothing to do while nothing is held)."""
        if self.machine.holding:
            for event in self.machine.release_held(self._clock()):
                self._report(event)

    def _report(self, event: Ejection | None) -> None:
        if event is None:
            return
        if event.suppressed:
            self._metrics.ejections_suppressed.labels(event.backend_id, event.reason.value).inc()
            log.info(
                "backend %s would be ejected (%s: %s) but its group is at its ejection limit",
                event.backend_id,
                event.reason.value,
                event.detail,
            )
            return
        self._metrics.ejections.labels(event.backend_id, event.reason.value).inc()
        log.warning(
            "backend %s ejected for %.1f s (ejection %d): %s: %s",
            event.backend_id,
            event.until - self._clock(),
            event.count,
            event.reason.value,
            event.detail,
        )

    # -- reading -------------------------------------------------------------------------------
    def state(self, backend_id: str) -> PassiveState:
        return self.states((backend_id,))[backend_id]

    def states(self, backend_ids: Iterable[str]) -> dict[str, PassiveState]:
        """:meth:`state` of each backend at one instant (the snapshot's, once per request)."""
        now = self._clock()
        serving, set_ejected = self.machine.serving, self._metrics.set_ejected
        found: dict[str, PassiveState] = {}
        for backend_id in backend_ids:
            if serving(backend_id, now):
                set_ejected(backend_id, False)
                found[backend_id] = SERVING
            else:
                view = self.machine.view(backend_id, now)
                set_ejected(backend_id, view.ejected)
                found[backend_id] = _as_state(view)
        return found

    def observed(self, backend_id: str) -> ObservedLatency | None:
        return self.machine.observed(backend_id)

    def admin(self, backend_id: str) -> dict[str, object]:
        v = self.machine.view(backend_id, self._clock())
        return {
            "ejected": v.ejected,
            "reason": v.reason.value if v.reason else None,
            "detail": v.detail,
            "ejected_for_s": round(v.ejected_for_s, 3),
            "weight": round(v.weight, 3),
            "on_probation": v.on_probation,
            "backpressure_for_s": round(v.backpressure_for_s, 3),
            "suspect": v.suspect,
            "consecutive_failures": v.consecutive_failures,
            "ejections": v.ejections,
            "ttft_s": v.ttft_s,
            "per_token_s": v.per_token_s,
        }


def _as_state(view: HealthView) -> PassiveState:
    if view.ejected:
        reason = view.reason.value if view.reason else "ejected"
        return PassiveState(ejected=f"{reason}: {view.detail}", weight=0.0)
    return PassiveState(weight=view.weight, backpressure=view.backpressure, suspect=view.suspect)
