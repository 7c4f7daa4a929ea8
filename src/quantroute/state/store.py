"""Latest scraped state per backend, folded with the gateway's own in-flight account.

The in-flight account (:mod:`quantroute.state.inflight`) holds every request dispatched and not
ended. ``snapshot()`` counts, per backend, those dispatched after its last successful scrape
*started* (with their estimated KV tokens: the scrape cannot have seen them) and the prompts still
waiting for a first byte, into an immutable :class:`Snapshot`, so a burst does not herd onto the
backend that looked emptiest at the last scrape. The clock is injected; nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from quantroute.base import Clock
from quantroute.config import BackendConfig, PolicyConfig
from quantroute.core.latency import ObservedLatency, TtftFit, aged, fit, peer_fit, pool
from quantroute.core.model import (
    SERVING,
    BackendMetrics,
    BackendState,
    Health,
    PassiveState,
    Snapshot,
)
from quantroute.resilience.passive import PassiveHealthMonitor
from quantroute.state.inflight import Account, BackendLoad, InFlight
from quantroute.state.metric_schema import SchemaReport, check_schema

MEASURED_REUSE_S = 0.1
"""How long a snapshot's aged measurements may be reused while nothing new was measured."""
MEASURED_FOLD_S = 0.05
"""New latency samples are folded into the snapshot's measurements at most this often: a
sample shows in the first snapshot taken this long after the last fold (at once when traffic is
lighter than one request per fold), so a busy gateway rebuilds them about twenty times a
second instead of for every request (a fold of two backends costs about as much as a
decision; the measurements it folds are smoothed over minutes, so 50 ms later changes no
route that matters). An ejection or a policy change shows at once."""
_IDLE_ACCOUNT = Account()
"""What a backend with no lease ever taken reads as (never written)."""
_EXPIRY_MARGIN_S = 1e-6
_Measured = tuple[
    dict[str, "ObservedLatency | None"], dict[str, ObservedLatency], dict[str, TtftFit]
]
"""Per backend: its measurement aged, its variant peers' pooled, the TTFT fit of the two."""
_MeasuredCache = tuple[object, tuple[object, ...], float, _Measured]


@dataclass(eq=False)
class _Record:
    config: BackendConfig
    metrics: BackendMetrics | None = None
    last_success: float | None = None
    last_scrape_started: float | None = None
    failures: int = 0
    scrapes: int = 0
    """Successful scrapes so far: two reads with the same count saw the same scraped metrics."""
    last_error: str | None = None
    steered_away: Counter[str] = field(default_factory=Counter)
    schema: SchemaReport | None = None
    """The metric-schema self-test of the first successful scrape."""
    schema_reported: bool = False


class StateStore:
    def __init__(
        self,
        backends: Iterable[BackendConfig],
        policy: PolicyConfig,
        clock: Clock,
        passive: PassiveHealthMonitor | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._listeners: list[Callable[[], None]] = []
        self._measured_cache: _MeasuredCache | None = None
        self.inflight = InFlight(clock, on_release=self._changed)
        self._rebuild = self.inflight.changed
        """Backends whose state to rebuild at the next snapshot: the in-flight account's set,
        which scrapes and scrape failures name backends in too."""
        # the last snapshot's states, kept to the next (see snapshot())
        self._built: dict[str, BackendState] = {}
        self._states: tuple[BackendState, ...] = ()
        self._measured_used: _Measured | None = None
        self._ejected: frozenset[str] = frozenset()
        self._timed: frozenset[str] = frozenset()
        self._expires = float("inf")
        self._stale = True
        self._passive_epoch = -1
        self._taken_at = float("-inf")
        self.passive = passive
        self.set_backends(backends)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (synchronously, no arguments) when room may have come: a fresh
        scrape, a request in flight ending, the backend set changing. Returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in tuple(self._listeners):
            listener()

    def set_policy(self, policy: PolicyConfig) -> None:
        self._policy = policy
        self._stale = True

    # -- membership (static config or discovery) ---------------------------------------------
    def set_backends(self, backends: Iterable[BackendConfig]) -> None:
        """Replace the backend set; known backends keep their state when their config is unchanged."""
        new: dict[str, _Record] = {}
        for config in backends:
            old = self._records.get(config.id)
            new[config.id] = old if old is not None and old.config == config else _Record(config)
        self._records = new
        self._ids = tuple(new)
        self._configs = tuple(r.config for r in new.values())
        self._stale = True
        self._changed()

    def configs(self) -> list[BackendConfig]:
        """The backends' configs, in order (a new list: the caller may keep or change it)."""
        return list(self._configs)

    def config_view(self) -> tuple[BackendConfig, ...]:
        """The same, as the store's own tuple (no copy: the request path reads it per request)."""
        return self._configs

    # -- scrape results ----------------------------------------------------------------------
    def record_scrape(self, backend_id: str, metrics: BackendMetrics, started_at: float) -> None:
        """Store a successful scrape (the first one also runs the metric-schema self-test)."""
        record = self._records.get(backend_id)
        if record is None:
            return
        if record.schema is None:
            record.schema = check_schema(metrics)
        record.metrics = metrics
        record.last_success = self._clock()
        record.scrapes += 1
        record.last_scrape_started = started_at
        record.failures = 0
        record.last_error = None
        self._rebuild.add(backend_id)
        self.inflight.scraped(backend_id, started_at)
        self._changed()

    def take_schema_report(self, backend_id: str) -> SchemaReport | None:
        """The backend's schema self-test, once (None afterwards and before its first scrape)."""
        record = self._records.get(backend_id)
        if record is None or record.schema is None or record.schema_reported:
            return None
        record.schema_reported = True
        return record.schema

    def record_failure(self, backend_id: str, error: str) -> None:
        record = self._records.get(backend_id)
        if record is not None:
            record.failures += 1
            record.last_error = error
            self._rebuild.add(backend_id)
            self._changed()  # a backend going down may leave queued requests no hope

    # -- decision statistics ------------------------------------------------------------------
    def note_steered_away(self, backend_id: str, filter_name: str) -> None:
        record = self._records.get(backend_id)
        if record is not None:
            record.steered_away[filter_name] += 1

    # -- reading ----------------------------------------------------------------------------
    def health(self, backend_id: str) -> Health:
        return self._health(self._records[backend_id], self._clock())

    def _health(self, record: _Record, now: float) -> Health:
        if record.failures >= self._policy.down_after_failures:
            return Health.DOWN
        if record.last_success is None:
            return Health.UNKNOWN
        if now - record.last_success > self._policy.staleness_limit_s:
            return Health.STALE
        return Health.FRESH

    def snapshot(self) -> Snapshot:
        """Every backend's state now. Kept from one snapshot to the next and rebuilt per backend
        as it changes: a backend named since by a scrape, its in-flight account
        (:attr:`InFlight.changed`) or passive health (:attr:`PassiveHealth.changed
        <quantroute.resilience.outliers.PassiveHealth.changed>`), one whose passive state shows
        something time ends (ejection, probation, backpressure, suspicion), and every backend
        when the measurements are folded anew, the backend set, the policy or the passive
        health settings change, or a fresh backend's last scrape comes near to going stale. A
        request changes one backend's account, so one state is built per request, not one per
        backend. :meth:`rebuilt` builds every one afresh; the two are held equal (tests)."""
        passive = self.passive
        if passive is not None:
            passive.tick()  # an ejection held for want of room, made once there is room
        now = self._clock()
        built = self._built
        changed = self._rebuild
        if passive is not None and passive.machine.epoch != self._passive_epoch:
            self._passive_epoch = passive.machine.epoch
            self._stale = True
        full = self._stale or now >= self._expires or now < self._taken_at or not built
        self._taken_at = now  # time only ends what a kept state shows: it may not run back
        if full:
            self._stale = False
            changed.clear()
            if passive is not None:
                passive.machine.changed.clear()
            return self._rebuild_all(now)
        dirty = self._timed
        if changed:
            dirty = dirty | changed
            changed.clear()
        if passive is not None and passive.machine.changed:
            dirty = dirty | passive.machine.changed
            passive.machine.changed.clear()
        if not dirty:
            if self._measured(self._ejected, now) is self._measured_used:
                return Snapshot(now, self._states)
            return self._rebuild_all(now)
        records = self._records
        if len(dirty) >= len(records):  # as many as there are (busy, or a small fleet)
            return self._rebuild_all(now)
        passives = self._passives([i for i in dirty if i in records])
        ejected = self._ejected
        for i, p in passives.items():
            if (p.ejected is None) != (i not in ejected):
                ejected = self._ejected = ejected ^ {i}
        measured = self._measured(ejected, now)
        if measured is not self._measured_used:
            return self._rebuild_all(now, passives)
        for i, p in passives.items():
            built[i] = self._build(records[i], now, p, measured)
        self._states = tuple(built.values())
        return Snapshot(now, self._states)

    def rebuilt(self) -> Snapshot:
        """The snapshot as :meth:`snapshot` would take it now, every backend's state built
        afresh (what the incremental one is held equal to). What :meth:`snapshot` keeps is left
        as it was."""
        if self.passive is not None:
            self.passive.tick()
        kept = (self._built, self._states, self._measured_used, self._ejected, self._timed)
        expires = self._expires
        try:
            return self._rebuild_all(self._clock())
        finally:
            self._built, self._states, self._measured_used, self._ejected, self._timed = kept
            self._expires = expires

    def _rebuild_all(self, now: float, known: dict[str, PassiveState] | None = None) -> Snapshot:
        ids = list(self._records)
        passives = self._passives(ids if known is None else [i for i in ids if i not in known])
        if known is not None:
            passives.update(known)
        self._ejected = frozenset(i for i, p in passives.items() if p.ejected is not None)
        measured = self._measured_used = self._measured(self._ejected, now)
        self._expires = float("inf")
        self._timed = frozenset()
        records, built = self._records, {}
        for i in ids:
            built[i] = self._build(records[i], now, passives[i], measured)
        self._built = built
        self._states = tuple(built.values())
        return Snapshot(now, self._states)

    def _build(
        self, r: _Record, now: float, passive: PassiveState, measured: _Measured
    ) -> BackendState:
        """One backend's state; notes when time alone would change it (:meth:`snapshot`)."""
        i = r.config.id
        health = self._health(r, now)
        if health is Health.FRESH:
            assert r.last_success is not None
            # rebuilt a little before the scrape goes stale: the float sum may round either way
            expires = r.last_success + self._policy.staleness_limit_s - _EXPIRY_MARGIN_S
            if expires < self._expires:
                self._expires = expires
        if passive is not SERVING:
            self._timed = self._timed | {i}
        elif i in self._timed:
            self._timed = self._timed - {i}
        a = self.inflight.accounts.get(i, _IDLE_ACCOUNT)
        observed, peers, fits = measured
        return BackendState(  # positional, in field order
            r.config,
            health,
            r.metrics,
            len(a.unseen),
            a.unseen_kv_tokens,
            a.prefill_tokens,
            passive,
            observed[i],
            peers.get(i),
            fits[i],
        )

    def _measured(self, ejected: frozenset[str], now: float) -> _Measured:
        """Each backend's measurement, aged, its variant peers' (:meth:`_peers`) and the TTFT
        fit of the two (as the latency scorer works it out under this policy). Kept from one
        snapshot to the next while none was ejected or let back, for at most
        :data:`MEASURED_REUSE_S` (the ageing that time adds is then under 0.1% of the weight at
        the default two-minute half-life), and while no backend has a new sample or the last
        fold is under :data:`MEASURED_FOLD_S` old: building them is most of a snapshot's cost,
        a snapshot is taken for every request, and a busy gateway gets a sample with nearly
        every answer. The same tuple is returned while it is kept."""
        ids = self._ids
        raw = None if self.passive is None else self.passive.observed
        key = (self._policy, ids, ejected)
        cached = self._measured_cache
        if cached is not None and (
            cached[0] != key or not 0.0 <= now - cached[2] < MEASURED_REUSE_S
        ):
            cached = None  # another policy, backend set or ejection, or aged too long: afresh
        if cached is not None and now - cached[2] < MEASURED_FOLD_S:
            return cached[3]
        samples = () if raw is None else tuple(raw(i) for i in ids)
        if cached is not None and samples == cached[1]:
            return cached[3]
        observed = {i: self._observed(i) for i in ids}
        peers = self._peers(observed, ejected)
        k, on = self._policy.latency_prior_samples, self._policy.measured_latency
        fits = {
            i: fit(observed[i] if on else None, k, peer_fit(peers.get(i) if on else None, k))
            for i in ids
        }
        measured = (observed, peers, fits)
        self._measured_cache = (key, samples, now, measured)
        return measured

    def _peers(
        self, observed: dict[str, ObservedLatency | None], ejected: Container[str]
    ) -> dict[str, ObservedLatency]:
        """Per backend, the pooled measurement of its variant: every replica measured and not
        ejected (an ejected one may be the slow replica the rule caught), itself included.
        Each replica's factors are then shrunk towards its variant's measured mean rather than
        the matrix prior: the matrix's error is the variant's, a replica's own deviation is what
        its samples show. Nothing for a replica that would only pool its own samples (one
        replica measured in its variant: they would count twice)."""
        if not self._policy.measured_latency or len(observed) < 2:
            return {}
        members: dict[str, list[str]] = {}
        for r in self._records.values():
            o = observed[r.config.id]
            if o is not None and o.n + o.per_token_n > 0.0 and r.config.id not in ejected:
                members.setdefault(r.config.variant_id, []).append(r.config.id)
        pooled: dict[str, ObservedLatency | None] = {}
        found: dict[str, ObservedLatency] = {}
        for r in self._records.values():
            variant, ids = r.config.variant_id, members.get(r.config.variant_id, [])
            if not ids or ids == [r.config.id]:
                continue
            if variant not in pooled:
                pooled[variant] = pool(o for i in ids if (o := observed[i]) is not None)
            mean = pooled[variant]
            if mean is not None:
                found[r.config.id] = mean
        return found

    def _passives(self, ids: Iterable[str]) -> dict[str, PassiveState]:
        """Each backend's passive state, read at one instant (all serving without passive health)."""
        return dict.fromkeys(ids, SERVING) if self.passive is None else self.passive.states(ids)

    def _observed(self, backend_id: str) -> ObservedLatency | None:
        """The measurement, its weight aged by the time since its last sample."""
        o = None if self.passive is None else self.passive.observed(backend_id)
        if o is None or o.at is None:
            return o
        return aged(o, self._clock() - o.at, self._policy.latency_half_life_s)

    def admin_view(self) -> list[dict[str, object]]:
        if self.passive is not None:
            self.passive.tick()
        now = self._clock()
        loads = self.inflight.loads()
        ids = list(self._records)
        ejected = {i for i, p in self._passives(ids).items() if p.ejected is not None}
        peers = self._peers({i: self._observed(i) for i in ids}, ejected)
        return [
            self._admin_row(r, now, loads.get(r.config.id, BackendLoad()), peers.get(r.config.id))
            for r in self._records.values()
        ]

    def _latency_row(self, backend_id: str, peers: ObservedLatency | None) -> dict[str, object]:
        """What was measured and how much it counts (the prior itself depends on the request
        and the matrix: ``POST /v1/route/explain`` shows the blend for one request); factors
        start from the variant peers' when those were measured (``peer_samples``)."""
        o = self._observed(backend_id)
        policy = self._policy
        k = policy.latency_prior_samples
        measured = policy.measured_latency
        ttft = fit(o if measured else None, k, peer_fit(peers if measured else None, k))
        per_token_n = o.per_token_n if o is not None and policy.measured_latency else 0.0
        return {
            "measured": policy.measured_latency,
            "ttft_s": None if o is None else o.ttft_s,
            "ttft_samples": 0 if o is None else o.ttft_samples,
            "per_token_s": None if o is None else o.per_token_s,
            "per_token_samples": 0 if o is None else o.per_token_samples,
            "load": None if o is None else o.load,
            "queue_factor": round(ttft.queue_factor, 4),
            "prefill_factor": round(ttft.prefill_factor, 4),
            "weight": round(ttft.weight, 4),
            "peer_samples": round(ttft.peer_n, 3),
            "per_token_weight": round(per_token_n / (per_token_n + k), 4),
        }

    def _admin_row(
        self, r: _Record, now: float, load: BackendLoad, peers: ObservedLatency | None
    ) -> dict[str, object]:
        m = r.metrics
        return {
            "id": r.config.id,
            "url": r.config.url,
            "served_model_name": r.config.served_model_name,
            "variant": r.config.variant_id,
            "state": self._health(r, now).value,
            "age_s": None if r.last_success is None else round(now - r.last_success, 3),
            "scrapes": r.scrapes,
            "consecutive_failures": r.failures,
            "last_error": r.last_error,
            "metrics": None
            if m is None
            else {
                "kv_cache_usage_perc": m.kv_cache_usage,
                "kv_metric_name": m.kv_metric_name,
                "num_requests_running": m.num_running,
                "num_requests_waiting": m.num_waiting,
                "num_gpu_blocks": m.num_gpu_blocks,
                "block_size": m.block_size,
                "model_names": list(m.model_names),
                "prefix_cache_queries": m.prefix_cache_queries,
                "prefix_cache_hits": m.prefix_cache_hits,
                "prefix_cache_hit_rate": m.prefix_hit_rate,
            },
            "in_flight": {
                "requests": load.requests,
                "since_last_scrape": load.unseen_requests,
                "estimated_kv_tokens": load.unseen_kv_tokens,
            },
            "decisions": {
                "chosen": self.inflight.dispatched[r.config.id],
                "steered_away": dict(r.steered_away),
            },
            "passive_health": None if self.passive is None else self.passive.admin(r.config.id),
            "latency": self._latency_row(r.config.id, peers),
            "metric_schema": None if r.schema is None else r.schema.as_dict(),
        }
