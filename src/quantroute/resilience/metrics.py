"""Prometheus metrics of fault handling, on the gateway's registry (see :mod:`quantroute.telemetry`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from quantroute.resilience.outcomes import AttemptOutcome
from quantroute.resilience.outliers import EjectionReason
from quantroute.series import CounterSeries


class ResilienceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._ejected_shown: dict[str, bool] = {}
        self.ejections = Counter(
            "quantroute_ejections",
            "Backends ejected from routing by passive health, by reason.",
            ["backend", "reason"],
            registry=r,
        )
        self.ejections_suppressed = Counter(
            "quantroute_ejections_suppressed",
            "Ejections not done because the group already had its maximum share ejected.",
            ["backend", "reason"],
            registry=r,
        )
        self.ejected = Gauge(
            "quantroute_backend_ejected",
            "1 while passive health keeps the backend out of routing.",
            ["backend"],
            registry=r,
        )
        self.outcomes = CounterSeries(  # one per request, as attempts below
            "quantroute_upstream_outcomes",
            "Upstream attempts by what they showed about the backend.",
            ["backend", "outcome"],
            r,
        )
        self.attempts = CounterSeries(  # one per request: plain numbers (quantroute.series)
            "quantroute_upstream_attempts",
            "Upstream attempts: first (the decision's choice) or retry.",
            ["backend", "attempt"],
            r,
        )
        self.retry_budget_exhausted = Counter(
            "quantroute_retry_budget_exhausted",
            "Retries not made because the retry budget was spent.",
            registry=r,
        )
        self.client_rejections = Counter(
            "quantroute_client_rejections",
            "Client requests cut by a limit (header/body timeout, body size, concurrency, "
            "nesting), or abandoned by their client during upload.",
            ["reason"],
            registry=r,
        )
        self.reloads = Counter(
            "quantroute_config_reloads",
            "Config reloads attempted, by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.reload_ok = Gauge(
            "quantroute_config_last_reload_success",
            "1 if the last config reload applied (or none was tried), 0 if the file was rejected.",
            registry=r,
        )
        self.reload_ok.set(1)
        self.schema_ok = Gauge(
            "quantroute_backend_metric_schema_ok",
            "1 when the backend's /metrics has every metric routing reads, 0 when some are missing.",
            ["backend"],
            registry=r,
        )
        self.draining = Gauge(
            "quantroute_draining", "1 once the gateway has been asked to stop.", registry=r
        )
        for result in ("ok", "error"):
            self.reloads.labels(result)
        self.retry_budget_exhausted.inc(0)

    def declare_backend(self, backend: str) -> None:
        for reason in EjectionReason:
            self.ejections.labels(backend, reason.value)
        self.set_ejected(backend, False)
        for outcome in (AttemptOutcome.OK, AttemptOutcome.SERVER_ERROR):
            self.outcomes.declare((backend, outcome.value))
        for attempt in ("first", "retry"):
            self.attempts.declare((backend, attempt))

    def forget_backend(self, backend: str) -> None:
        """Its gauges go; its counters stay (rates need them), as for the other metrics."""
        for metric in (self.ejected, self.schema_ok):
            metric.remove_by_labels({"backend": backend})
        self._ejected_shown.pop(backend, None)

    def set_ejected(self, backend: str, ejected: bool) -> None:
        """The ``ejected`` gauge, written only when it changes: it is read on every snapshot
        (every request), and prometheus-client's ``labels()`` takes a lock each time."""
        if self._ejected_shown.get(backend) is not ejected:
            self.ejected.labels(backend).set(1 if ejected else 0)
            self._ejected_shown[backend] = ejected
