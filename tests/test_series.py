"""The per-request counter and histogram families export what prometheus-client's own would.

Each test drives a prometheus-client ``Counter``/``Histogram`` and the matching
:mod:`quantroute.series` family through the same updates, each on a registry of its own, and
compares the two expositions byte for byte, creation timestamps aside (they are read from the
clock at each series' first use).
"""

from __future__ import annotations

import gc
import re
import threading
import weakref
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from quantroute.series import CounterSeries, HistogramSeries

BUCKETS = (0.005, 0.01, 0.1, 1.0, 60.0)


def exposition(registry: CollectorRegistry) -> str:
    text = generate_latest(registry).decode()
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 <time>", text)


def test_a_counter_family_exports_what_a_prometheus_client_counter_does() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("qr_requests", "Requests.", ["backend", "status"], registry=theirs)
    series = CounterSeries("qr_requests", "Requests.", ["backend", "status"], ours)
    counter.labels("b", "503")
    series.declare(("b", "503"))
    for labels, amount in [(("a", "200"), 1.0), (("b", "200"), 3.0), (("a", "200"), 0.25)]:
        counter.labels(*labels).inc(amount)
        series.inc(labels, amount)
    assert exposition(ours) == exposition(theirs)
    assert 'qr_requests_total{backend="a",status="200"} 1.25' in exposition(ours)
    assert series.value(("a", "200")) == 1.25
    assert series.value(("c", "200")) == 0.0


@pytest.mark.parametrize(
    "values",
    [
        [0.005, 0.01, 60.0],  # on the bounds: counted in that bucket (le)
        [0.0, 0.0049, 0.0051, 0.7, 61.0, 1e9],  # between bounds, below the first, past the last
        [],  # declared only
    ],
    ids=["on-bounds", "between", "declared"],
)
def test_a_histogram_family_exports_what_a_prometheus_client_histogram_does(
    values: list[float],
) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("qr_ttfb_seconds", "TTFB.", ["backend"], buckets=BUCKETS, registry=theirs)
    series = HistogramSeries("qr_ttfb_seconds", "TTFB.", ["backend"], BUCKETS, ours)
    histogram.labels("idle")
    series.declare(("idle",))
    for v in values:
        histogram.labels("busy").observe(v)
        series.observe(("busy",), v)
    assert exposition(ours) == exposition(theirs)
    assert series.count(("busy",)) == len(values)


def test_a_counter_only_goes_up_as_prometheus_clients_does() -> None:
    registry = CollectorRegistry()
    counter = CounterSeries("qr_up", "Up.", ["backend"], registry)
    counter.inc(("a",), 2.0)
    with pytest.raises(ValueError, match="only be incremented"):
        counter.inc(("a",), -1.0)
    assert counter.value(("a",)) == 2.0


def test_a_series_with_the_wrong_number_of_label_values_is_refused() -> None:
    registry = CollectorRegistry()
    counter = CounterSeries("qr_a", "A.", ["backend", "group"], registry)
    histogram = HistogramSeries("qr_b", "B.", ["backend"], BUCKETS, registry)
    with pytest.raises(ValueError, match="2 label values"):
        counter.inc(("only-one",))
    with pytest.raises(ValueError, match="1 label values"):
        histogram.observe(("a", "b"), 1.0)
    assert "qr_a_total{" not in exposition(registry)


def test_a_family_is_one_name_on_its_registry() -> None:
    registry = CollectorRegistry()
    CounterSeries("qr_requests", "Requests.", ["backend"], registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("qr_requests", "Again.", ["backend"], registry=registry)


def test_histogram_buckets_must_be_distinct() -> None:
    with pytest.raises(ValueError, match="distinct"):
        HistogramSeries("qr_c", "C.", ["backend"], (1.0, 1.0), CollectorRegistry())
    with pytest.raises(ValueError, match="distinct"):
        HistogramSeries("qr_d", "D.", ["backend"], (), CollectorRegistry())


def test_a_scrape_on_another_thread_sees_every_series_while_new_ones_arrive() -> None:
    """Series created while a scrape runs on another thread: the scrape never fails ("dict
    changed size during iteration") and, once both are done, a last scrape has them all."""
    registry = CollectorRegistry()
    counter = CounterSeries("qr_e", "E.", ["backend"], registry)
    histogram = HistogramSeries("qr_f", "F.", ["backend"], BUCKETS, registry)
    failures: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                generate_latest(registry)
        except BaseException as exc:  # reported below
            failures.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(3000):
            counter.inc((f"b{i}",))
            histogram.observe((f"b{i}",), i / 100)
    finally:
        done.set()
        scraper.join(timeout=30)
    assert not scraper.is_alive()
    assert failures == []
    text = exposition(registry)
    assert text.count("qr_e_total{") == 3000
    assert text.count("qr_f_count{") == 3000


def test_a_scrape_copes_with_series_added_by_code_the_garbage_collector_runs() -> None:
    """The deterministic form of the race above. With the collector run at every allocation,
    each collection finds a cycle whose weakref callback (Python code, where another thread
    could take over) adds a series and leaves the next such cycle: series keep arriving while
    ``collect`` copies and reads the families. The scrape must not fail; a later one sees them."""
    registry = CollectorRegistry()
    counter = CounterSeries("qr_g", "G.", ["backend"], registry)
    histogram = HistogramSeries("qr_h", "H.", ["backend"], BUCKETS, registry)
    for i in range(200):
        counter.inc((f"b{i}",))
        histogram.observe((f"b{i}",), 0.1)
    arrived: list[int] = []
    refs: list[weakref.ref[_Cycle]] = []

    def arrive(_ref: object) -> None:
        n = len(arrived)
        arrived.append(n)
        counter.inc((f"late{n}",))
        histogram.observe((f"late{n}",), 1.0)
        if n < 200:
            refs.append(_cycle(arrive))

    threshold = gc.get_threshold()
    gc.collect()
    refs.append(_cycle(arrive))
    gc.set_threshold(1)  # a collection at (nearly) every allocation of a collected object
    try:
        families = [*counter.collect(), *histogram.collect()]
    finally:
        gc.set_threshold(*threshold)
    assert len(arrived) > 2  # series arrived during the scrape, not only before it
    assert len(families) == 2
    text = exposition(registry)
    assert text.count('qr_g_total{backend="late') == len(arrived)
    assert text.count('qr_h_count{backend="late') == len(arrived)


class _Cycle:
    me: object


def _cycle(callback: Callable[[weakref.ref[_Cycle]], None]) -> weakref.ref[_Cycle]:
    """An object only the garbage collector frees (it refers to itself), calling ``callback``."""
    junk = _Cycle()
    junk.me = junk
    return weakref.ref(junk, callback)
