"""Counters and histograms updated on every request, as plain numbers exported at scrape time.

prometheus-client's ``Counter`` and ``Histogram`` children are built for threads: every
``inc``/``observe`` checks the metric is observable, takes a lock per value, and a histogram scans
its bounds in Python. For the handful of series the gateway updates on every request (answers by
status, tokens, upstream attempts, time to first byte, decision time) that came to about 40
thousand machine instructions per request (benchmarks/overhead/analysis.md, tenth pass). These
families keep each series as a number in a dict, updated only from the event loop's thread, and
hand prometheus-client the values through its custom-collector interface when ``/metrics`` is
read, so the exposition is prometheus-client's own: the same names, ``_total``/``_bucket``/
``_sum``/``_count`` samples and ``_created`` timestamps as its ``Counter`` and ``Histogram``
(``tests/test_series.py`` compares the two byte for byte).

A scrape may run on another thread: it copies each dict with ``dict.copy`` before reading it.
Not ``tuple(d.items())``: that builds a tuple per item, an allocation that can start the garbage
collector, whose weakref callbacks and finalizers are Python code, at which the interpreter may
hand the GIL to the event loop's thread mid-copy ("dictionary changed size during iteration",
seen once in CI). ``dict.copy`` allocates no collected object while it reads the source.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class _Family(Collector):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)

    def _check(self, labels: Labels) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(self.labelnames)} label values, got {labels!r}")

    def _family(self) -> Metric:
        """An empty family of this kind, name and labels (``collect`` fills one)."""
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        """The family's names, without values: the registry refuses a second family of them."""
        yield self._family()


class CounterSeries(_Family):
    """A counter family: ``inc(labels, amount)`` with the label values in ``labelnames`` order."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[Labels, float] = {}
        self._created: dict[Labels, float] = {}
        registry.register(self)

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        if amount < 0.0:  # as prometheus-client's: a counter only goes up
            raise ValueError(f"{self.name}: counters can only be incremented, not by {amount}")
        try:
            self._values[labels] += amount
        except KeyError:
            self._declare(labels)
            self._values[labels] += amount

    def declare(self, labels: Labels) -> None:
        """The series at 0, so ``rate()`` and alerts see its first event."""
        if labels not in self._values:
            self._declare(labels)

    def _declare(self, labels: Labels) -> None:
        self._check(labels)
        self._created[labels] = time.time()
        self._values[labels] = 0.0

    def value(self, labels: Labels) -> float:
        return self._values.get(labels, 0.0)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        created = self._created
        for labels, value in self._values.copy().items():
            family.add_metric(labels, value, created=created.get(labels))
        yield family


class _Buckets:
    __slots__ = ("counts", "created", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0
        self.created = time.time()


class HistogramSeries(_Family):
    """A histogram family: ``observe(labels, value)``; a value on a bound counts in its bucket
    (``le``), as prometheus-client's."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be distinct and not empty")
        if bounds[-1] == float("inf"):
            bounds.pop()
        super().__init__(name, documentation, labelnames)
        self._bounds = tuple(bounds)
        self._le = [*map(floatToGoString, bounds), "+Inf"]
        self._series: dict[Labels, _Buckets] = {}
        registry.register(self)

    def observe(self, labels: Labels, value: float) -> None:
        try:
            series = self._series[labels]
        except KeyError:
            series = self._declare(labels)
        series.counts[bisect_left(self._bounds, value)] += 1
        series.total += value

    def declare(self, labels: Labels) -> None:
        if labels not in self._series:
            self._declare(labels)

    def _declare(self, labels: Labels) -> _Buckets:
        self._check(labels)
        series = self._series[labels] = _Buckets(len(self._le))
        return series

    def count(self, labels: Labels) -> int:
        series = self._series.get(labels)
        return 0 if series is None else sum(series.counts)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, series in self._series.copy().items():
            counts, total = tuple(series.counts), series.total
            cumulative: list[tuple[str, float]] = []
            running = 0
            for le, n in zip(self._le, counts, strict=True):
                running += n
                cumulative.append((le, float(running)))
            family.add_metric(labels, cumulative, total)
            # each series' buckets, count, sum, then its creation time, as prometheus-client's
            named = dict(zip(self.labelnames, labels, strict=True))
            family.samples.append(Sample(f"{self.name}_created", named, series.created))
        yield family
