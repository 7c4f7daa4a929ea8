"""Latest scraped state per backend plus the gateway's own optimistic account of what it sent.

Between two scrapes the store remembers every request dispatched to a backend after that
backend's last successful scrape *started*, with its estimated KV tokens, until either the
request ends or a newer scrape (which then reflects it) succeeds. ``snapshot()`` folds that
account into an immutable :class:`Snapshot`, so a burst does not herd onto the backend that looked
emptiest at the last scrape. The clock is injected; nothing here does I/O.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from quantroute.config import BackendConfig, PolicyConfig
from quantroute.core.model import BackendMetrics, BackendState, Health, Snapshot

Clock = Callable[[], float]


@dataclass(eq=False)
class _Record:
    config: BackendConfig
    metrics: BackendMetrics | None = None
    last_success: float | None = None
    last_scrape_started: float | None = None
    failures: int = 0
    last_error: str | None = None
    pending: dict[int, tuple[float, int]] = field(default_factory=dict)
    prefilling: dict[int, int] = field(default_factory=dict)
    """Ticket -> prompt tokens, from dispatch until the first byte of the response."""
    in_flight: int = 0
    chosen: int = 0
    steered_away: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class Ticket:
    backend_id: str
    number: int


class StateStore:
    def __init__(
        self, backends: Iterable[BackendConfig], policy: PolicyConfig, clock: Clock
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._tickets = itertools.count(1)
        self.set_backends(backends)

    # -- membership (static config or discovery) ---------------------------------------------
    def set_backends(self, backends: Iterable[BackendConfig]) -> None:
        """Replace the backend set; known backends keep their state when their config is unchanged."""
        new: dict[str, _Record] = {}
        for config in backends:
            old = self._records.get(config.id)
            new[config.id] = old if old is not None and old.config == config else _Record(config)
        self._records = new

    def configs(self) -> list[BackendConfig]:
        return [r.config for r in self._records.values()]

    # -- scrape results ----------------------------------------------------------------------
    def record_scrape(self, backend_id: str, metrics: BackendMetrics, started_at: float) -> None:
        record = self._records.get(backend_id)
        if record is None:
            return
        record.metrics = metrics
        record.last_success = self._clock()
        record.last_scrape_started = started_at
        record.failures = 0
        record.last_error = None
        record.pending = {k: v for k, v in record.pending.items() if v[0] >= started_at}

    def record_failure(self, backend_id: str, error: str) -> None:
        record = self._records.get(backend_id)
        if record is not None:
            record.failures += 1
            record.last_error = error

    # -- the gateway's own account -------------------------------------------------------------
    def begin(self, backend_id: str, kv_tokens: int, prompt_tokens: int = 0) -> Ticket:
        ticket = Ticket(backend_id, next(self._tickets))
        record = self._records.get(backend_id)
        if record is not None:
            record.pending[ticket.number] = (self._clock(), kv_tokens)
            record.prefilling[ticket.number] = prompt_tokens
            record.in_flight += 1
            record.chosen += 1
        return ticket

    def first_byte(self, ticket: Ticket) -> None:
        """The response has started: its prompt is no longer prefill backlog."""
        record = self._records.get(ticket.backend_id)
        if record is not None:
            record.prefilling.pop(ticket.number, None)

    def end(self, ticket: Ticket) -> None:
        record = self._records.get(ticket.backend_id)
        if record is not None:
            record.pending.pop(ticket.number, None)
            record.prefilling.pop(ticket.number, None)
            record.in_flight -= 1

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
        now = self._clock()
        states = tuple(
            BackendState(
                config=r.config,
                health=self._health(r, now),
                metrics=r.metrics,
                age_s=None if r.last_success is None else now - r.last_success,
                pending_requests=len(r.pending),
                pending_kv_tokens=sum(tokens for _, tokens in r.pending.values()),
                prefill_backlog_tokens=sum(r.prefilling.values()),
            )
            for r in self._records.values()
        )
        return Snapshot(taken_at=now, backends=states)

    def in_flight(self, backend_id: str) -> int:
        record = self._records.get(backend_id)
        return 0 if record is None else record.in_flight

    def admin_view(self) -> list[dict[str, object]]:
        now = self._clock()
        return [self._admin_row(r, now) for r in self._records.values()]

    def _admin_row(self, r: _Record, now: float) -> dict[str, object]:
        m = r.metrics
        return {
            "id": r.config.id,
            "url": r.config.url,
            "served_model_name": r.config.served_model_name,
            "variant": r.config.variant_id,
            "state": self._health(r, now).value,
            "age_s": None if r.last_success is None else round(now - r.last_success, 3),
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
            },
            "in_flight": {
                "requests": r.in_flight,
                "since_last_scrape": len(r.pending),
                "estimated_kv_tokens": sum(t for _, t in r.pending.values()),
            },
            "decisions": {"chosen": r.chosen, "steered_away": dict(r.steered_away)},
        }
