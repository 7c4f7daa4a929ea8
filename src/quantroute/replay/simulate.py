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
ejection rules off), so the latency scorer learns from them as it does behind HTTP.

Flow control (``policy.flow_control`` and each group's ``on_saturation``) is applied as the
gateway's :class:`~quantroute.flow.gate.FlowGate` applies it: a request whose group is
saturated (every backend it may use turned away for want of room alone) is downgraded below the
floor (``downgrade``, interactive only), refused at once (``reject``) or held in the group's
queue, the same pure :class:`~quantroute.flow.queue.FlowQueue` the gateway uses (interactive
before batch, then first come; bounded length, evictions, a deadline ``max_wait_s`` after it was
queued). The queue is re-tried, best first, whenever the state store says room may have come (a
scrape, a lease released), as :class:`~quantroute.flow.control.FlowControl` does, each request
dispatched counted in the snapshot the next is decided on; a request still saturated stops its
group's walk; while a group has requests waiting, a new one joins them. A request refused by the
queue (full, timed out) gets ``flow_control.reject_status``. Its TTFT runs from its arrival, so
the wait in the gateway is in it.

Not modelled: retries and continuations (simulated backends do not fail), ejections, the prefix
index (a trace carries no prompt text), network and gateway overhead, clients that leave.
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
from quantroute.core.model import Decision, LatencyClass, Outcome, RequestFeatures, Snapshot
from quantroute.core.saturation import with_dispatched
from quantroute.core.scheduler import Policy, decide
from quantroute.flow.queue import FlowQueue, Ticket
from quantroute.flow.settings import OnSaturation
from quantroute.replay.fleet import SimulatedBackend, build_fleet
from quantroute.replay.trace import TraceRow
from quantroute.resilience.outliers import PassiveHealth
from quantroute.sim.engine import EngineRequest, StepOutput
from quantroute.state.inflight import Lease
from quantroute.state.store import StateStore

STATUS = {Outcome.NO_BACKEND: 503, Outcome.TOO_LONG: 400,
          Outcome.UNKNOWN_MODEL: 404, Outcome.UNSUPPORTED_API: 404}  # fmt: skip
_SCRAPE, _ARRIVAL, _STEP, _DEADLINE = 0, 1, 2, 3
"""Order of events at the same simulated moment: a scrape, arrivals, step ends, then queued
requests whose ``max_wait_s`` ran out."""


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
    queued_s: float | None = None
    """Simulated seconds it waited in the gateway's flow-control queue (None: never queued)."""
    downgraded: bool = False
    """Sent below its group's floor because the variants meeting it were saturated."""
    refusal: str | None = None
    """Why flow control refused it: ``queue_full`` or ``queue_timeout``."""

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
class _Queued:
    """A request waiting in the flow-control queue (a ticket's item)."""

    number: int
    result: RequestResult
    features: RequestFeatures
    mode: OnSaturation
    kv_tokens: int


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
        flow = config.policy.flow_control
        self.queue: FlowQueue[_Queued] = FlowQueue(flow, self.clock)
        self.modes: dict[str, OnSaturation] = {
            g.name: g.on_saturation or flow.on_saturation for g in config.groups
        }
        self.pumping = False
        self.store.subscribe(self.pump)

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
        if self.arrivals_left or busy or len(self.queue):
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
        snapshot = self.snapshot()
        decision = decide(features, snapshot, self.matrix, self.policy)
        # What FlowGate.admit does with the first decision (src/quantroute/flow/gate.py).
        group = decision.group or features.model
        mode = self.modes.get(group, cfg.flow_control.on_saturation)
        routed = decision.outcome is Outcome.ROUTED
        if mode == "reject" or (routed and not self.queue.depth(group)):
            self.settle(number, result, features, decision)
            return
        if not routed and not decision.saturated:
            self.settle(number, result, features, decision)
            return
        if not routed:
            downgraded = self.downgrade(features, mode, snapshot)
            if downgraded is not None:
                self.settle(number, result, features, downgraded)
                return
        self.enqueue(_Queued(number, result, features, mode, request_kv_tokens(features, cfg)))

    def downgrade(
        self, features: RequestFeatures, mode: OnSaturation, snapshot: Snapshot
    ) -> Decision | None:
        """Interactive only, where the group allows it: the best variant below the floor."""
        if mode != "downgrade" or features.latency_class is not LatencyClass.INTERACTIVE:
            return None
        decision = decide(features, snapshot, self.matrix, self.policy, downgrade=True)
        return decision if decision.outcome is Outcome.ROUTED else None

    def enqueue(self, queued: _Queued) -> None:
        group = queued.features.model  # the group (decision.group is its name) or model name
        batch = queued.features.latency_class is LatencyClass.BATCH
        admission = self.queue.admit(group, queued, batch=batch)
        if admission.evicted is not None:
            self.refuse(admission.evicted, "queue_full")
        ticket = admission.ticket
        if ticket is None:
            queued.result.queued_s = 0.0
            self.refuse_result(queued.result, "queue_full")
            return
        self.push(ticket.deadline, _DEADLINE, lambda: self.expire(ticket))
        self.pump()

    def expire(self, ticket: Ticket[_Queued]) -> None:
        if self.queue.remove(ticket):
            self.refuse(ticket, "queue_timeout")

    def refuse(self, ticket: Ticket[_Queued], reason: str) -> None:
        self.queue.remove(ticket)
        ticket.item.result.queued_s = self.queue.waited_s(ticket)
        self.refuse_result(ticket.item.result, reason)

    def refuse_result(self, result: RequestResult, reason: str) -> None:
        result.status = self.config.policy.flow_control.reject_status
        result.refusal = reason

    def pump(self) -> None:
        """Dispatch every queued request that can go now, best first per group (the rule of
        :meth:`quantroute.flow.control.FlowControl.pump`)."""
        if self.pumping or not len(self.queue):
            return
        self.pumping = True
        try:
            snapshot = self.snapshot()
            for group in self.queue.groups():
                for ticket in self.queue.waiting(group):
                    queued = ticket.item
                    decision = self.attempt(queued, snapshot)
                    if decision is None:
                        break
                    self.queue.remove(ticket)
                    queued.result.queued_s = self.queue.waited_s(ticket)
                    self.settle(queued.number, queued.result, queued.features, decision)
                    if decision.chosen is not None:
                        snapshot = with_dispatched(snapshot, decision.chosen, queued.kv_tokens)
        finally:
            self.pumping = False

    def attempt(self, queued: _Queued, snapshot: Snapshot) -> Decision | None:
        """A queued request's decision now: routed, downgraded, None while saturated, or a
        failure waiting cannot clear (FlowGate._attempt)."""
        decision = decide(queued.features, snapshot, self.matrix, self.policy)
        if decision.outcome is Outcome.ROUTED or not decision.saturated:
            return decision
        return self.downgrade(queued.features, queued.mode, snapshot)

    def settle(
        self, number: int, result: RequestResult, features: RequestFeatures, decision: Decision
    ) -> None:
        """Dispatch a routed decision to its backend's engine, or answer the router's error."""
        if decision.chosen is None:
            result.status = STATUS.get(decision.outcome, 503)
            return
        row = result.row
        backend = self.fleet[decision.chosen]
        result.backend, result.variant, result.relaxed = (
            backend.id,
            backend.variant,
            decision.relaxed,
        )
        result.downgraded = decision.downgraded
        lease = self.store.inflight.begin(
            backend.id, request_kv_tokens(features, self.config.policy), row.prompt_tokens
        )
        key = f"q{number}"
        prior = decision.latency.get(backend.id)
        self.pending[key] = _Pending(result, lease, row.t, prior)
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
            states.append(replace(b, observed=o, ttft_fit=None))  # the scorer fits it
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
