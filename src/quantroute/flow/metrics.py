"""Prometheus metrics of flow control, on the gateway's registry (see :mod:`quantroute.telemetry`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OUTCOMES = ("dispatched", "timeout", "evicted", "disconnected", "refused")
"""How a wait ended: a backend had room; ``max_wait_s`` ran out; a request that outranks it took
its place; the client left; the group's backends became unable to serve it (down, ...)."""


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.depth = Gauge(
            "quantroute_flow_queue_depth",
            "Requests waiting in the gateway for a saturated group, by latency class.",
            ["group", "latency_class"],
            registry=r,
        )
        self.wait = Histogram(
            "quantroute_flow_queue_wait_seconds",
            "Time requests waited in the flow-control queue, by how the wait ended.",
            ["group", "outcome"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "quantroute_flow_rejected",
            "Requests answered 503/429 by flow control: queue_full or queue_timeout.",
            ["group", "reason"],
            registry=r,
        )
        self.downgraded = Counter(
            "quantroute_flow_downgraded",
            "Interactive requests sent below the group's quality floor because the variants "
            "meeting it were saturated (on_saturation: downgrade).",
            ["group", "backend"],
            registry=r,
        )

    def declare_group(self, group: str) -> None:
        for latency_class in ("interactive", "batch"):
            self.depth.labels(group, latency_class)
        for reason in ("queue_full", "queue_timeout"):
            self.rejected.labels(group, reason)
