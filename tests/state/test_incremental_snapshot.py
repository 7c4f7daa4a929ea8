"""The routing snapshot is kept from one request to the next and rebuilt per backend as it
changes (``StateStore.snapshot``). Held equal, after every step of random sequences of what
happens to a fleet (leases, first bytes, releases, scrapes and their failures, attempt outcomes,
latency samples, backends going down and back, time passing, new policies and backend sets), to
the snapshot built afresh from every backend (``StateStore.rebuilt``); and shown to build only
the backends that changed."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from quantroute.config import BackendConfig, GroupConfig, PolicyConfig
from quantroute.core.model import BackendMetrics, BackendState, Health
from quantroute.resilience.metrics import ResilienceMetrics
from quantroute.resilience.outcomes import AttemptOutcome
from quantroute.resilience.passive import PassiveHealthMonitor
from quantroute.resilience.settings import OutlierDetection
from quantroute.state.inflight import Lease
from quantroute.state.store import StateStore
from quantroute.testing.state import ManualClock, plain_backend

IDS = ("a", "b", "c", "d")
OUTLIERS = OutlierDetection(
    consecutive_failures=2,
    base_ejection_s=1.0,
    max_ejection_s=4.0,
    suspect_s=0.07,
    slow_start_s=0.3,
    backpressure_s=0.06,
    held_ejection_s=3.0,
    latency_min_samples=1,
    latency_ejection_s=1.5,
    latency_floor_s=0.01,
)
POLICIES = (
    PolicyConfig(staleness_limit_s=2.0, latency_half_life_s=10.0),
    PolicyConfig(staleness_limit_s=0.5, down_after_failures=1, latency_half_life_s=10.0),
    PolicyConfig(staleness_limit_s=2.0, measured_latency=False),
)
OUTCOMES = (
    AttemptOutcome.OK,
    AttemptOutcome.CONNECT_ERROR,
    AttemptOutcome.SERVER_ERROR,
    AttemptOutcome.BACKPRESSURE,
)


def config(backend_id: str) -> BackendConfig:
    """Two variants, so that measurements pool per variant."""
    variant = "v" if backend_id in ("a", "b", "c") else "w"
    return plain_backend(backend_id).model_copy(update={"variant": variant})


@dataclass
class Fleet:
    clock: ManualClock
    monitor: PassiveHealthMonitor
    store: StateStore
    leases: list[Lease] = field(default_factory=list)

    def configure(self, ids: tuple[str, ...]) -> None:
        configs = [config(i) for i in ids]
        groups = [GroupConfig(name="auto", variants=("v", "w"))]
        self.monitor.configure(OUTLIERS, configs, groups)
        self.store.set_backends(configs)


def fleet() -> Fleet:
    clock = ManualClock()
    monitor = PassiveHealthMonitor(OUTLIERS, clock, ResilienceMetrics(CollectorRegistry()))
    store = StateStore([], POLICIES[0], clock, monitor)
    f = Fleet(clock, monitor, store)
    f.configure(IDS)
    return f


backend = st.sampled_from(IDS)
steps = st.one_of(
    st.tuples(st.just("begin"), backend, st.integers(0, 4000), st.integers(0, 2000)),
    st.tuples(st.just("first_byte"), st.integers(0, 30)),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(st.just("scrape"), backend, st.floats(0.0, 1.0), st.floats(0.0, 0.5)),
    st.tuples(st.just("scrape_failed"), backend),
    st.tuples(
        st.just("outcome"), backend, st.sampled_from(OUTCOMES), st.none() | st.floats(0.0, 2.0)
    ),
    st.tuples(st.just("latency"), backend, st.floats(0.01, 2.0), st.floats(0.001, 0.1)),
    st.tuples(st.just("down"), backend, st.booleans()),
    st.tuples(st.just("recovered"), backend),
    st.tuples(st.just("forget"), backend),
    st.tuples(
        st.just("wait"),
        st.sampled_from([0.0, 0.001, 0.01, 0.02, 0.03, 0.049, 0.051, 0.11, 0.6, 1.2, 2.5]),
    ),
    st.tuples(st.just("policy"), st.integers(0, len(POLICIES) - 1)),
    st.tuples(st.just("backends"), st.permutations(IDS), st.integers(1, len(IDS))),
)


def apply(f: Fleet, step: tuple[object, ...]) -> None:
    kind, *args = step
    store, monitor, clock = f.store, f.monitor, f.clock
    if kind == "begin":
        b, kv, prompt = args
        assert isinstance(b, str) and isinstance(kv, int) and isinstance(prompt, int)
        f.leases.append(store.inflight.begin(b, kv, prompt))
    elif kind in ("first_byte", "release"):
        (n,) = args
        assert isinstance(n, int)
        if f.leases:
            lease = f.leases[n % len(f.leases)]
            lease.first_byte() if kind == "first_byte" else lease.release()
    elif kind == "scrape":
        b, usage, ago = args
        assert isinstance(b, str) and isinstance(usage, float) and isinstance(ago, float)
        metrics = BackendMetrics(kv_cache_usage=usage, num_running=1.0, num_waiting=0.0)
        store.record_scrape(b, metrics, clock.now - ago)
        monitor.set_down(b, False)
    elif kind == "scrape_failed":
        (b,) = args
        assert isinstance(b, str)
        store.record_failure(b, "refused")
    elif kind == "outcome":
        b, outcome, retry_after = args
        assert isinstance(b, str) and isinstance(outcome, AttemptOutcome)
        assert retry_after is None or isinstance(retry_after, float)
        monitor.outcome(b, outcome, retry_after, sent_at=clock.now)
    elif kind == "latency":
        b, ttft, per_token = args
        assert isinstance(b, str) and isinstance(ttft, float) and isinstance(per_token, float)
        monitor.latency(b, ttft_s=ttft, per_token_s=per_token, prior_queue_s=0.01)
    elif kind == "down":
        b, down = args
        assert isinstance(b, str) and isinstance(down, bool)
        monitor.set_down(b, down)
    elif kind == "recovered":
        (b,) = args
        assert isinstance(b, str)
        monitor.recovered(b)
    elif kind == "forget":
        (b,) = args
        assert isinstance(b, str)
        store.inflight.forget(b)
    elif kind == "wait":
        (dt,) = args
        assert isinstance(dt, float)
        clock.now += dt
    elif kind == "policy":
        (n,) = args
        assert isinstance(n, int)
        store.set_policy(POLICIES[n])
    else:
        order, n = args
        assert isinstance(order, list) and isinstance(n, int)
        f.configure(tuple(order[:n]))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(steps, min_size=1, max_size=80))
def test_the_kept_snapshot_is_the_one_built_afresh_after_every_step(
    sequence: list[tuple[object, ...]],
) -> None:
    f = fleet()
    f.store.snapshot()
    for step in sequence:
        apply(f, step)
        kept = f.store.snapshot()
        assert kept == f.store.rebuilt(), step
        if len(sequence) % 3 == 0:  # some sequences take two snapshots at one instant
            assert f.store.snapshot() == kept


def states(f: Fleet) -> dict[str, BackendState]:
    return {s.id: s for s in f.store.snapshot().backends}


def test_a_lease_rebuilds_its_backend_only() -> None:
    f = fleet()
    for i in IDS:
        f.store.record_scrape(i, BackendMetrics(kv_cache_usage=0.1), f.clock.now)
    before = states(f)
    f.clock.now += 0.001
    lease = f.store.inflight.begin("b", 500, 100)
    after = states(f)
    assert after["b"].pending_requests == 1 and after["b"].prefill_backlog_tokens == 100
    assert all(after[i] is before[i] for i in ("a", "c", "d"))
    lease.first_byte()
    lease.release()
    released = states(f)
    assert released["b"] == before["b"] and released["b"] is not before["b"]
    assert all(released[i] is before[i] for i in ("a", "c", "d"))


def test_a_kept_fresh_state_goes_stale_on_time_alone() -> None:
    f = fleet()
    f.store.set_policy(POLICIES[0])  # staleness limit 2 s
    f.store.record_scrape("a", BackendMetrics(kv_cache_usage=0.1), f.clock.now)
    assert states(f)["a"].health is Health.FRESH
    f.clock.now += 1.999
    assert states(f)["a"].health is Health.FRESH
    f.clock.now += 0.002
    assert states(f)["a"].health is Health.STALE


def test_an_ejected_state_is_rebuilt_until_its_ejection_and_probation_end() -> None:
    f = fleet()
    for _ in range(OUTLIERS.consecutive_failures):
        f.monitor.outcome("a", AttemptOutcome.SERVER_ERROR, sent_at=f.clock.now)
    assert states(f)["a"].passive.ejected is not None
    f.clock.now += OUTLIERS.base_ejection_s + 0.1  # back, on probation: its weight ramps up
    first = states(f)["a"].passive
    f.clock.now += 0.02  # well within the measurements' reuse: nothing else rebuilds it
    second = states(f)["a"].passive
    assert first.ejected is None and 0.0 < first.weight < second.weight < 1.0
    f.clock.now += OUTLIERS.slow_start_s
    assert states(f)["a"].passive.weight == 1.0
    f.clock.now += 0.01  # serving plainly again: kept from one snapshot to the next
    assert states(f)["a"] is states(f)["a"]


def test_passive_settings_changed_alone_rebuild_every_state() -> None:
    """Outlier detection turned off and on again while an ejection runs: no backend is named,
    the ejection shows again at once."""
    f = fleet()
    for _ in range(OUTLIERS.consecutive_failures):
        f.monitor.outcome("a", AttemptOutcome.SERVER_ERROR, sent_at=f.clock.now)
    assert states(f)["a"].passive.ejected is not None
    configs = f.store.configs()
    groups = [GroupConfig(name="auto", variants=("v", "w"))]
    f.monitor.configure(OUTLIERS.model_copy(update={"enabled": False}), configs, groups)
    f.clock.now += 0.01
    assert states(f)["a"].passive.ejected is None
    f.clock.now += 0.01
    assert states(f)["a"].passive.ejected is None  # kept: it serves plainly
    f.monitor.configure(OUTLIERS, configs, groups)
    f.clock.now += 0.01
    assert states(f)["a"].passive.ejected is not None


def test_a_state_time_ends_is_rebuilt_until_then_and_kept_after() -> None:
    f = fleet()
    f.monitor.outcome("a", AttemptOutcome.BACKPRESSURE, sent_at=f.clock.now)
    assert states(f)["a"].passive.backpressure
    f.clock.now += OUTLIERS.backpressure_s - 0.01
    assert states(f)["a"].passive.backpressure
    f.clock.now += 0.02  # its backpressure over, within the measurements' reuse
    assert not states(f)["a"].passive.backpressure
    f.clock.now += 0.01
    assert states(f)["a"] is states(f)["a"]
