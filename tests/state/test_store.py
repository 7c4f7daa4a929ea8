"""The state store with a hand-driven clock: health states and the optimistic in-flight account."""

from __future__ import annotations

from quantroute.config import BackendConfig, PolicyConfig
from quantroute.core.model import BackendMetrics, Health
from quantroute.state.store import StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[StateStore, Clock]:
    clock = Clock()
    cfg = BackendConfig(
        id="a", url="http://a:8000", served_model_name="m", max_seq_len=8192, capacity=8
    )
    return StateStore(
        [cfg], PolicyConfig(staleness_limit_s=5.0, down_after_failures=2), clock
    ), clock


def test_unknown_then_fresh_then_stale() -> None:
    store, clock = make()
    assert store.health("a") is Health.UNKNOWN
    store.record_scrape("a", BackendMetrics(kv_cache_usage=0.1), started_at=clock.now)
    assert store.health("a") is Health.FRESH
    clock.now += 5.5
    assert store.health("a") is Health.STALE
    assert (
        store.snapshot().backends[0].metrics is not None
    )  # stale keeps its last values, not zeros


def test_down_after_consecutive_failures_and_recovery() -> None:
    store, clock = make()
    store.record_scrape("a", BackendMetrics(), started_at=clock.now)
    store.record_failure("a", "refused")
    assert store.health("a") is Health.FRESH
    store.record_failure("a", "refused")
    assert store.health("a") is Health.DOWN
    store.record_scrape("a", BackendMetrics(), started_at=clock.now)
    assert store.health("a") is Health.FRESH


def test_pending_account_until_a_later_scrape_sees_it() -> None:
    store, clock = make()
    store.record_scrape("a", BackendMetrics(), started_at=clock.now)
    clock.now += 0.1
    first = store.inflight.begin("a", 500)
    store.inflight.begin("a", 300)
    state = store.snapshot().backends[0]
    assert (state.pending_requests, state.pending_kv_tokens) == (2, 800)
    first.release()
    assert store.snapshot().backends[0].pending_kv_tokens == 300
    store.record_scrape(
        "a", BackendMetrics(), started_at=clock.now - 0.05
    )  # started before dispatch
    assert store.snapshot().backends[0].pending_requests == 1
    store.record_scrape(
        "a", BackendMetrics(), started_at=clock.now + 0.01
    )  # started after: reflects it
    assert store.snapshot().backends[0].pending_requests == 0
    assert store.inflight.total() == 1
    assert store.admin_view()[0]["in_flight"] == {
        "requests": 1,
        "since_last_scrape": 0,
        "estimated_kv_tokens": 0,
    }


def test_membership_change_keeps_state_of_unchanged_backends() -> None:
    store, clock = make()
    store.record_scrape("a", BackendMetrics(kv_cache_usage=0.5), started_at=clock.now)
    b = BackendConfig(
        id="b", url="http://b:8000", served_model_name="m", max_seq_len=8192, capacity=8
    )
    store.set_backends([*store.configs(), b])
    assert [s.health for s in store.snapshot().backends] == [Health.FRESH, Health.UNKNOWN]
    store.set_backends([b])
    assert [s.id for s in store.snapshot().backends] == ["b"]


def test_prefill_backlog_lasts_until_the_first_byte() -> None:
    store, clock = make()
    store.record_scrape("a", BackendMetrics(), started_at=clock.now)
    first = store.inflight.begin("a", 5000, prompt_tokens=4000)
    second = store.inflight.begin("a", 900, prompt_tokens=800)
    assert store.snapshot().backends[0].prefill_backlog_tokens == 4800
    first.first_byte()
    assert store.snapshot().backends[0].prefill_backlog_tokens == 800
    second.release()
    first.release()
    first.release()  # a second release changes nothing
    assert store.snapshot().backends[0].prefill_backlog_tokens == 0
    assert store.inflight.total() == 0


def test_admin_view_counts_successful_scrapes_only() -> None:
    store, clock = make()
    assert store.admin_view()[0]["scrapes"] == 0
    store.record_scrape("a", BackendMetrics(kv_cache_usage=0.1), started_at=clock.now)
    store.record_failure("a", "refused")
    store.record_scrape("a", BackendMetrics(kv_cache_usage=0.2), started_at=clock.now)
    assert store.admin_view()[0]["scrapes"] == 2
