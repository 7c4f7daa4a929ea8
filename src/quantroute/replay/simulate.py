"""Replay a trace through the simulated fleet under a gateway config: discrete events in
simulated time, the real routing core and the gateway's own state store.

Pure and deterministic: no clock, no I/O, no threads. Time is a number the event loop advances
(arrivals, scrapes, engine steps, each at its simulated moment; equal times in a fixed order),
every random draw is seeded. Per request the replay does what the gateway does: the store's
snapshot (scraped metrics no older than ``scrape_interval_s`` plus the in-flight account), the
core's ``decide`` with the config's policy, groups and the matrix, a lease on the chosen backend
(released at the last token; its prompt leaves the prefill backlog at the first), and the
request is added to that backend's engine (``quantroute.sim.engine``, the simulator's vLLM V1
scheduler). Each answered request's TTFT and time per token are reported to the same pure
measurement the gateway keeps (:class:`~quantroute.resilience.outliers.PassiveHealth`, its
ejection rules off), so the latency scorer learns from them as it does behind HTTP. Not
modelled: retries and continuations (simulated backends do not fail), ejections, the prefix
index (a trace carries no prompt text), network and gateway overhead.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from quantroute.config import GatewayConfig
from quantroute.core.filters import request_kv_tokens
from quantroute.core.latency import LatencyEstimate, aged
from quantroute.core.matrix import CapabilityMatrix
from quantroute.core.model import Outcome, RequestFeatures, Snapshot
from quantroute.core.scheduler import Policy, decide
from quantroute.replay.fleet import SimulatedBackend, build_fleet
from quantroute.replay.trace import TraceRow
from quantroute.resilience.outliers import PassiveHealth
from quantroute.sim.engine import EngineRequest, StepOutput
from quantroute.state.inflight import Lease
from quantroute.state.store import StateStore

STATUS = {Outcome.NO_BACKEND: 503, Outcome.TOO_LONG: 400,
          Outcome.UNKNOWN_MODEL: 404, Outcome.UNSUPPORTED_API: 404}  # fmt: skip
_SCRAPE, _ARRIVAL, _STEP = 0, 1, 2
"""Order of events at the same simulated moment: a scrape, then arrivals, then step ends."""


@dataclass(slots=True)
class RequestResult:
    row: TraceRow
    model: str
    status: int = 0
    backend: str | None = None
    variant: str | None = None
    relaxed: tuple[str, ...] = ()
    ttft: float | None = None
    """Simulated seconds from arrival to the first token."""
    end: float | None = None
    output_tokens: int = 0
    preemptions: int = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.ttft is not None


@dataclass
class ReplayResult:
    results: list[RequestResult]
    duration_s: float
    """From the first arrival to the last token."""
    preemptions: int
    backends: dict[str, str] = field(default_factory=dict)
    """Backend id -> variant."""
    gpu_cost_per_hour: dict[str, float] = field(default_factory=dict)


def _bind(
    arrive: Callable[[int, RequestResult], None], number: int, result: RequestResult
) -> Callable[[], None]:
    return lambda: arrive(number, result)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(eq=False)
class _Pending:
    result: RequestResult
    lease: Lease
    arrival: float
    prior: LatencyEstimate | None = None
    first: float | None = None


class _Replay:
    def __init__(
        self,
        config: GatewayConfig,
        matrix: CapabilityMatrix | None,
        fleet: dict[str, SimulatedBackend],
        scrape_interval_s: float,
    ) -> None:
        self.config = config
        self.matrix = matrix
        self.fleet = fleet
        self.clock = _Clock()
        backends = [b for b in config.backends if b.id in fleet]
        self.store = StateStore(backends, config.policy, self.clock)
        measuring = config.resilience.outlier_detection.model_copy(update={"enabled": False})
        self.measured = PassiveHealth(measuring, {b.id: b.variant_id for b in backends})
        self.policy = Policy(config.policy, config.groups)
        self.interval = scrape_interval_s
        self.events: list[tuple[float, int, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.pending: dict[str, _Pending] = {}
        self.arrivals_left = 0

    def push(self, at: float, kind: int, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (at, kind, next(self.order), action))

    def run(
        self, rows: Sequence[TraceRow], model_for: Callable[[TraceRow], str]
    ) -> list[RequestResult]:
        results = [RequestResult(row, model_for(row)) for row in rows]
        for number, result in enumerate(results):
            self.push(result.row.t, _ARRIVAL, _bind(self.arrive, number, result))
        self.arrivals_left = len(results)
        self.push(0.0, _SCRAPE, self.scrape)
        while self.events:
            at, _, _, action = heapq.heappop(self.events)
            self.clock.now = at
            action()
        return results

    def scrape(self) -> None:
        now = self.clock.now
        for backend in self.fleet.values():
            self.store.record_scrape(backend.id, backend.metrics(), started_at=now)
        busy = any(b.busy for b in self.fleet.values())
        if self.arrivals_left or busy:
            self.push(now + self.interval, _SCRAPE, self.scrape)

    def arrive(self, number: int, result: RequestResult) -> None:
        self.arrivals_left -= 1
        row, cfg = result.row, self.config.policy
        features = RequestFeatures(
            model=result.model,
            prompt_tokens=row.prompt_tokens,
            max_tokens=row.max_tokens,
            stream=True,
            task=row.task,
            latency_class=row.latency_class,
            sequence=number,
        )
        decision = decide(features, self.snapshot(), self.matrix, self.policy)
        if decision.chosen is None:
            result.status = STATUS.get(decision.outcome, 503)
            return
        backend = self.fleet[decision.chosen]
        result.backend, result.variant, result.relaxed = (
            backend.id,
            backend.variant,
            decision.relaxed,
        )
        lease = self.store.inflight.begin(
            backend.id, request_kv_tokens(features, cfg), row.prompt_tokens
        )
        key = f"q{number}"
        prior = decision.latency.get(backend.id)
        self.pending[key] = _Pending(result, lease, self.clock.now, prior)
        request = EngineRequest(key, row.prompt_tokens, row.max_tokens, row.output_tokens)
        backend.engine.add_request(request, self.clock.now)
        if not backend.busy:
            self.step(backend)

    def snapshot(self) -> Snapshot:
        snap = self.store.snapshot()
        half_life, now = self.config.policy.latency_half_life_s, self.clock.now
        states = []
        for b in snap.backends:
            o = self.measured.observed(b.id)
            if o is not None and o.at is not None:
                o = aged(o, now - o.at, half_life)
            states.append(replace(b, observed=o))
        return replace(snap, backends=tuple(states))

    def measure(self, backend_id: str, pending: _Pending, end: float, tokens: int) -> None:
        """What the gateway's attempt reports for a streamed answer (proxy/attempt.py)."""
        if pending.first is None or pending.result.ttft is None or tokens <= 0:
            return
        prior = pending.prior
        self.measured.record_latency(
            backend_id,
            end,
            ttft_s=pending.result.ttft,
            per_token_s=(end - pending.first) / (tokens - 1) if tokens > 1 else None,
            load=pending.lease.account.requests,
            prior_queue_s=None if prior is None else prior.prior_queue_ms / 1000.0,
            prior_prefill_s=None if prior is None else prior.prior_prefill_ms / 1000.0,
        )

    def step(self, backend: SimulatedBackend) -> None:
        out = backend.engine.step(self.clock.now)
        backend.busy = True
        self.push(out.end, _STEP, lambda: self.apply(backend, out))

    def apply(self, backend: SimulatedBackend, out: StepOutput) -> None:
        for token in out.tokens:
            if token.index == 0:
                pending = self.pending[token.request_id]
                pending.result.ttft = token.time - pending.arrival
                pending.first = token.time
                pending.lease.first_byte()
        for done in out.finished:
            pending = self.pending.pop(done.request_id)
            self.measure(backend.id, pending, done.finished_time, done.output_tokens)
            pending.lease.release()
            pending.result.status = 200
            pending.result.end = done.finished_time
            pending.result.output_tokens = done.output_tokens
            pending.result.preemptions = done.num_preemptions
        backend.busy = False
        if backend.engine.has_work():
            self.step(backend)


def _auto_model(row: TraceRow) -> str:
    return row.model


def replay(
    rows: Sequence[TraceRow],
    config: GatewayConfig,
    matrix: CapabilityMatrix | None,
    *,
    seed: int = 0,
    scrape_interval_s: float | None = None,
    model_for: Callable[[TraceRow], str] = _auto_model,
    profiles: Mapping[str, str] | None = None,
    throttle: Mapping[str, float] | None = None,
) -> ReplayResult:
    """Every row through a fresh simulated fleet of ``config`` (same inputs, same result);
    ``throttle``: backends slower than their profile (see :func:`build_fleet`)."""
    fleet = build_fleet(config, seed=seed, profiles=profiles, throttle=throttle)
    interval = scrape_interval_s or config.policy.scrape_interval_s
    sim = _Replay(config, matrix, fleet, interval)
    results = sim.run(rows, model_for)
    ends = [r.end for r in results if r.end is not None]
    start = rows[0].t if rows else 0.0
    return ReplayResult(
        results,
        duration_s=(max(ends) - start) if ends else 0.0,
        preemptions=sum(b.engine.stats().num_preemptions_total for b in fleet.values()),
        backends={b.id: b.variant for b in fleet.values()},
        gpu_cost_per_hour={b.id: b.gpu_cost_per_hour for b in config.backends if b.id in fleet},
    )
