"""The gateway's own Prometheus metrics, on an injected registry (never the global one).

Names keep the two our users' dashboards already use (``llm_router_*``); everything else is under
``quantroute_``. Never ``vllm:``: those series belong to the backends.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quantroute import __version__
from quantroute.core.model import Health
from quantroute.flow.metrics import FlowMetrics
from quantroute.resilience.metrics import ResilienceMetrics
from quantroute.series import CounterSeries, HistogramSeries
from quantroute.state.inflight import InFlight

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.route_duration = HistogramSeries(
            "llm_router_route_duration_seconds",
            "Time to take a routing decision (snapshot, filters, scorers, picker).",
            ["model_id"],
            _LATENCY_BUCKETS,
            r,
        )
        self.cache_pressure = Counter(
            "llm_router_cache_pressure_events",
            "Requests steered away from a backend because of KV-cache pressure.",
            ["model_id"],
            registry=r,
        )
        # updated on every request: plain numbers, exported at scrape time (quantroute.series)
        self.requests = CounterSeries(
            "quantroute_requests",
            "Requests answered, by backend, group and HTTP status.",
            ["backend", "group", "status"],
            r,
        )
        self.prompt_tokens = CounterSeries(
            "quantroute_prompt_tokens",
            "Prompt tokens reported by backends.",
            ["backend", "group"],
            r,
        )
        self.completion_tokens = CounterSeries(
            "quantroute_completion_tokens",
            "Completion tokens reported by backends.",
            ["backend", "group"],
            r,
        )
        self.ttfb = HistogramSeries(
            "quantroute_upstream_ttfb_seconds",
            "Upstream time to first byte of the response body.",
            ["backend"],
            _TTFB_BUCKETS,
            r,
        )
        self.backend_up = Gauge(
            "quantroute_backend_up",
            "1 for the backend's current state, 0 for the others.",
            ["backend", "state"],
            registry=r,
        )
        self.backend_kv = Gauge(
            "quantroute_backend_kv_cache_usage",
            "Last scraped KV-cache usage (0-1).",
            ["backend"],
            registry=r,
        )
        self.scrape_errors = Counter(
            "quantroute_scrape_errors",
            "Failed scrapes of a backend's /metrics.",
            ["backend"],
            registry=r,
        )
        self.rejections = Counter(
            "quantroute_filter_rejections",
            "Backends filtered out of a decision, by reason.",
            ["backend", "reason"],
            registry=r,
        )
        self.no_backend = Counter(
            "quantroute_no_backend",
            "Requests answered 503 because no backend could take them.",
            ["group"],
            registry=r,
        )
        self.retries = Counter(
            "quantroute_retries",
            "Requests retried on another backend before the first byte.",
            ["backend"],
            registry=r,
        )
        self.continuations = Counter(
            "quantroute_continuations",
            "Streams that broke mid-generation, by the backend that broke, the one that continued "
            "(none: not continued) and the outcome.",
            ["from", "to", "outcome"],
            registry=r,
        )
        self.gpu_cost = Gauge(
            "quantroute_backend_gpu_cost_per_hour",
            "GPU price per hour of a backend (from config).",
            ["backend"],
            registry=r,
        )
        self.access_log_dropped = Counter(
            "quantroute_access_log_dropped",
            "Access-log records dropped because the writer fell behind (queue full).",
            registry=r,
        )
        self.prefix_prompt_tokens = Counter(
            "quantroute_prefix_prompt_tokens",
            "Estimated prompt tokens sent to a backend while the prefix index is kept.",
            ["backend"],
            registry=r,
        )
        self.prefix_expected_tokens = Counter(
            "quantroute_prefix_expected_hit_tokens",
            "Of those, the tokens the gateway's prefix index expected the backend to have cached.",
            ["backend"],
            registry=r,
        )
        self.prefix_withdrawn = Counter(
            "quantroute_prefix_affinity_withdrawn",
            "Decisions in which a backend holding part of the prompt got no prefix bonus "
            "because it was too far ahead in load (the balance guard).",
            ["backend"],
            registry=r,
        )
        self.prefix_entries = Gauge(
            "quantroute_prefix_index_entries",
            "Blocks the gateway's prefix index holds for a backend.",
            ["backend"],
            registry=r,
        )
        self.backend_prefix_hit = Gauge(
            "quantroute_backend_prefix_cache_hit_ratio",
            "The backend's own prefix-cache hit rate: cached over queried prompt tokens, as its "
            "counters read at the last scrape (since it started).",
            ["backend"],
            registry=r,
        )
        self._in_flight = _InFlightCollector()
        r.register(self._in_flight)
        self.build_info = Gauge(
            "quantroute_build_info",
            "Always 1; the labels say which quantroute and Python this gateway runs.",
            ["version", "python_version"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.resilience = ResilienceMetrics(r)
        self.flow = FlowMetrics(r)

    def set_worker(self, index: int, count: int, pid: int) -> None:
        """``serve --workers``: which worker's /metrics this is (each worker has its own)."""
        info = Gauge(
            "quantroute_worker_info",
            "This gateway worker process (serve --workers: one series per scrape, the "
            "answering worker's own counters)",
            ["worker", "workers", "pid"],
            registry=self.registry,
        )
        info.labels(str(index), str(count), str(pid)).set(1)

    def watch_in_flight(self, inflight: InFlight, backends: Callable[[], Iterable[str]]) -> None:
        """Serve the in-flight gauges from the one in-flight account, read at each scrape;
        ``backends`` lists the ids that get a per-backend series even at 0."""
        self._in_flight.source = inflight
        self._in_flight.backends = backends

    def declare_backend(self, backend: str, gpu_cost_per_hour: float) -> None:
        """Create a backend's event series at 0, so rate() and alerts see their first event."""
        self.cache_pressure.labels(backend)
        self.scrape_errors.labels(backend)
        self.retries.labels(backend)
        self.gpu_cost.labels(backend).set(gpu_cost_per_hour)
        self.resilience.declare_backend(backend)

    def forget_backend(self, backend: str) -> None:
        """Drop a departed backend's gauges: a last "stale" or a price must not linger in alerts
        and cost sums. Its counters stay (rates need them); in-flight returns to 0 by itself."""
        for option in Health:
            self.backend_up.remove(backend, option.value)
        self.backend_kv.remove(backend)
        self.gpu_cost.remove(backend)
        self.prefix_entries.remove(backend)
        self.backend_prefix_hit.remove(backend)
        self.resilience.forget_backend(backend)

    def declare_prefix(self, backend: str) -> None:
        """The prefix series of a backend at 0 (when the policy keeps the prefix index)."""
        self.prefix_prompt_tokens.labels(backend)
        self.prefix_expected_tokens.labels(backend)
        self.prefix_withdrawn.labels(backend)

    def set_backend_prefix_hit(self, backend: str, ratio: float | None) -> None:
        if ratio is not None:
            self.backend_prefix_hit.labels(backend).set(ratio)

    def declare_group(self, group: str) -> None:
        self.no_backend.labels(group)
        self.requests.declare(("none", group, "503"))
        self.flow.declare_group(group)

    def set_backend_state(self, backend: str, state: Health, kv: float | None) -> None:
        for option in Health:
            self.backend_up.labels(backend, option.value).set(1.0 if option is state else 0.0)
        if kv is not None:
            self.backend_kv.labels(backend).set(kv)


class _InFlightCollector(Collector):
    """The two in-flight gauges, read from the in-flight account (0 until one is watched)."""

    def __init__(self) -> None:
        self.source: InFlight | None = None
        self.backends: Callable[[], Iterable[str]] = tuple

    def collect(self) -> Iterator[Metric]:
        total = GaugeMetricFamily(
            "quantroute_in_flight_requests", "Requests the gateway is serving now."
        )
        loads = self.source.loads() if self.source is not None else {}
        total.add_metric([], sum(load.requests for load in loads.values()))
        yield total
        per = GaugeMetricFamily(
            "quantroute_backend_in_flight_requests",
            "Requests in flight per backend.",
            labels=["backend"],
        )
        counts = dict.fromkeys(self.backends(), 0)
        counts.update((backend, load.requests) for backend, load in loads.items())
        for backend, count in counts.items():
            per.add_metric([backend], count)
        yield per
