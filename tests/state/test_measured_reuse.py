"""The snapshot's measurements (aged latency, variant peers, TTFT fit) are kept from one request
to the next: a new sample shows in the first snapshot once the last fold is MEASURED_FOLD_S old
(not in every snapshot of a busy gateway), an ejection or time past the reuse window in the very
next snapshot, and a reused value is the one computed afresh."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from quantroute.config import GroupConfig, PolicyConfig
from quantroute.core.latency import fit, peer_fit
from quantroute.core.model import BackendState
from quantroute.resilience.metrics import ResilienceMetrics
from quantroute.resilience.outcomes import AttemptOutcome
from quantroute.resilience.passive import PassiveHealthMonitor
from quantroute.resilience.settings import OutlierDetection
from quantroute.state.store import MEASURED_FOLD_S, MEASURED_REUSE_S, StateStore
from quantroute.testing.state import ManualClock, plain_backend


def stack() -> tuple[StateStore, PassiveHealthMonitor, ManualClock]:
    clock = ManualClock()
    settings = OutlierDetection(base_ejection_s=30.0, suspect_s=0.0, max_ejection_share=0.5)
    monitor = PassiveHealthMonitor(settings, clock, ResilienceMetrics(CollectorRegistry()))
    configs = [plain_backend(b) for b in ("a", "b", "c")]
    monitor.configure(settings, configs, [GroupConfig(name="auto", variants=("v",))])
    policy = PolicyConfig(latency_half_life_s=10.0)
    return StateStore(configs, policy, clock, monitor), monitor, clock


def sample(monitor: PassiveHealthMonitor, backend_id: str, ttft_s: float) -> None:
    monitor.latency(backend_id, ttft_s=ttft_s, prior_queue_s=0.05, prior_prefill_s=0.05)


def states(store: StateStore) -> dict[str, BackendState]:
    return {s.id: s for s in store.snapshot().backends}


def fresh_fit(state: BackendState) -> object:
    """The TTFT fit as the latency scorer works it out from the state's own fields."""
    k = PolicyConfig(latency_half_life_s=10.0).latency_prior_samples
    return fit(state.observed, k, peer_fit(state.peers, k))


def test_a_new_sample_is_folded_in_once_the_last_fold_is_old_enough() -> None:
    store, monitor, clock = stack()
    for _ in range(4):
        sample(monitor, "a", 0.1)
    folded_at = clock.now
    before = states(store)["a"]
    sample(monitor, "a", 0.5)  # same instant: the fold just made is kept
    assert states(store)["a"].observed is before.observed
    clock.now = folded_at + MEASURED_FOLD_S * 0.9
    assert states(store)["a"].observed is before.observed
    clock.now = folded_at + MEASURED_FOLD_S * 1.001  # the fold is MEASURED_FOLD_S old: folded in
    after = states(store)["a"]
    assert before.observed is not None and after.observed is not None
    assert after.observed.ttft_samples == before.observed.ttft_samples + 1
    assert after.ttft_fit is not None and before.ttft_fit is not None
    assert after.ttft_fit.queue_factor > before.ttft_fit.queue_factor
    assert after.ttft_fit == fresh_fit(after)


def test_with_nothing_new_the_fold_is_kept_past_the_fold_interval() -> None:
    store, monitor, clock = stack()
    for _ in range(4):
        sample(monitor, "a", 0.1)
    before = states(store)["a"]
    assert MEASURED_FOLD_S < MEASURED_REUSE_S
    clock.now += (MEASURED_FOLD_S + MEASURED_REUSE_S) / 2  # past the fold, within the reuse
    assert states(store)["a"].observed is before.observed


def test_within_the_window_the_same_objects_after_it_aged_afresh() -> None:
    store, monitor, clock = stack()
    for backend_id in ("a", "b"):
        for _ in range(4):
            sample(monitor, backend_id, 0.2)
    first = states(store)
    clock.now += MEASURED_REUSE_S / 2
    again = states(store)
    assert again["a"].observed is first["a"].observed
    assert again["c"].peers is first["c"].peers
    clock.now += MEASURED_REUSE_S  # past the window: aged again, the weight is lower
    later = states(store)
    assert later["a"].observed is not None and first["a"].observed is not None
    assert later["a"].observed.n < first["a"].observed.n
    for state in later.values():
        assert state.ttft_fit == fresh_fit(state)


def test_an_ejection_takes_the_replica_out_of_its_peers_at_once() -> None:
    store, monitor, _ = stack()
    for _ in range(4):
        sample(monitor, "a", 0.1)
    for _ in range(4):
        sample(monitor, "b", 0.9)
    pooled = states(store)["c"].peers
    assert pooled is not None and pooled.n > 0
    for _ in range(5):
        monitor.outcome("b", AttemptOutcome.SERVER_ERROR)  # b ejected: same instant
    now = states(store)
    assert now["b"].passive.ejected is not None
    assert now["c"].peers is not None and now["c"].peers.n < pooled.n
    assert now["c"].ttft_fit == fresh_fit(now["c"])


def test_a_policy_change_is_not_served_from_the_old_policy() -> None:
    store, monitor, _ = stack()
    for _ in range(4):
        sample(monitor, "a", 0.4)
    on = states(store)["a"]
    assert on.ttft_fit is not None and on.ttft_fit.weight > 0.0
    store.set_policy(PolicyConfig(latency_half_life_s=10.0, measured_latency=False))
    off = states(store)["a"]
    assert off.ttft_fit is not None and off.ttft_fit.weight == 0.0
