"""The routing snapshot's cost per request as the fleet grows: kept, against built afresh.

``StateStore.snapshot`` keeps the last snapshot and rebuilds only the backends that changed;
``StateStore.rebuilt`` builds every backend's state, as every snapshot did before. Both run here
in one process on the same store, interleaved in short blocks, over the request pattern of the
gateway: a snapshot, then a lease on the chosen backend (taken in turn), released before the
next request, one request per simulated millisecond, with outlier detection on and a latency
sample per answer (so the measurements are folded anew every 50 ms, as on a busy gateway). The
report is the median time per request of each and their ratio in the same run, per fleet size:
absolute times move with the machine, the ratio does not.

    python snapshot_scale.py                 # 2, 8, 32 and 128 backends
    python snapshot_scale.py --sizes 2 16 --blocks 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from quantroute.config import GroupConfig, PolicyConfig
from quantroute.core.model import Snapshot
from quantroute.resilience.metrics import ResilienceMetrics
from quantroute.resilience.outcomes import AttemptOutcome
from quantroute.resilience.passive import PassiveHealthMonitor
from quantroute.resilience.settings import OutlierDetection
from quantroute.state.store import StateStore
from quantroute.testing.state import ManualClock, plain_backend

PER_BLOCK = 500


def fleet(n: int) -> tuple[StateStore, PassiveHealthMonitor, ManualClock]:
    clock = ManualClock()
    settings = OutlierDetection()
    monitor = PassiveHealthMonitor(settings, clock, ResilienceMetrics(CollectorRegistry()))
    configs = [plain_backend(f"b{i}") for i in range(n)]
    monitor.configure(settings, configs, [GroupConfig(name="auto", variants=("v",))])
    return StateStore(configs, PolicyConfig(), clock, monitor), monitor, clock


def block(
    store: StateStore,
    monitor: PassiveHealthMonitor,
    clock: ManualClock,
    take: Callable[[], Snapshot],
    start: int,
) -> float:
    """Seconds per request over one block of requests."""
    n = len(store.configs())
    began = time.perf_counter()
    for k in range(start, start + PER_BLOCK):
        clock.now += 0.001
        take()
        backend = f"b{k % n}"
        lease = store.inflight.begin(backend, 400, 200)
        lease.first_byte()
        monitor.outcome(backend, AttemptOutcome.OK, sent_at=clock.now)
        monitor.latency(backend, ttft_s=0.05, per_token_s=0.01)
        lease.release()
    return (time.perf_counter() - began) / PER_BLOCK


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 8, 32, 128])
    p.add_argument("--blocks", type=int, default=20, help="blocks of each, interleaved")
    a = p.parse_args()
    print(f"{'backends':>8s} {'kept µs':>9s} {'afresh µs':>10s} {'kept/afresh':>12s}")
    for n in a.sizes:
        store, monitor, clock = fleet(n)
        block(store, monitor, clock, store.snapshot, 0)  # warm up
        kept, afresh = [], []
        for b in range(a.blocks):
            start = (2 * b + 1) * PER_BLOCK
            kept.append(block(store, monitor, clock, store.snapshot, start))
            afresh.append(block(store, monitor, clock, store.rebuilt, start + PER_BLOCK))
        k, f = statistics.median(kept) * 1e6, statistics.median(afresh) * 1e6
        print(f"{n:8d} {k:9.1f} {f:10.1f} {k / f:12.2f}", flush=True)


if __name__ == "__main__":
    main()
