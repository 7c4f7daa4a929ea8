"""An ejection held back by the group share, as the gateway runs it: the monitor and the state
store on a hand-driven clock. The store's snapshot (every request, every scrape) brings in the
end of the ejection that held the slot, with no failure needed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from quantroute.config import GroupConfig, PolicyConfig
from quantroute.resilience.metrics import ResilienceMetrics
from quantroute.resilience.outcomes import AttemptOutcome
from quantroute.resilience.passive import PassiveHealthMonitor
from quantroute.resilience.settings import OutlierDetection
from quantroute.state.store import StateStore
from quantroute.testing.state import ManualClock, plain_backend


def test_the_snapshot_makes_an_ejection_held_until_the_slot_holders_ended() -> None:
    clock = ManualClock()
    registry = CollectorRegistry()
    settings = OutlierDetection(max_ejection_share=0.5, base_ejection_s=30.0, suspect_s=0.0)
    monitor = PassiveHealthMonitor(settings, clock, ResilienceMetrics(registry))
    configs = [plain_backend(b) for b in ("a", "b", "c")]
    monitor.configure(settings, configs, [GroupConfig(name="auto", variants=("v",))])
    store = StateStore(configs, PolicyConfig(), clock, monitor)
    for _ in range(5):
        monitor.outcome("b", AttemptOutcome.SERVER_ERROR)  # ejected until 1030
    clock.now = 1027.0
    for _ in range(5):
        monitor.outcome("c", AttemptOutcome.SERVER_ERROR)  # held: b has the slot
    ejected = {s.id: s.passive.ejected is not None for s in store.snapshot().backends}
    assert ejected == {"a": False, "b": True, "c": False}
    clock.now = 1030.0  # b's ejection ends; no request, no failure since
    ejected = {s.id: s.passive.ejected is not None for s in store.snapshot().backends}
    assert ejected == {"a": False, "b": False, "c": True}
    made = registry.get_sample_value(
        "quantroute_ejections_total", {"backend": "c", "reason": "consecutive_failures"}
    )
    assert made == 1.0
