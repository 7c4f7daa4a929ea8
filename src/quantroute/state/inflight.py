"""The one owner of "in flight": every request this gateway has sent to a backend and not finished.

A :class:`Lease` is taken when a request is dispatched to a backend and released exactly once
when it ends, however it ends (answered, failed, retried elsewhere, client gone). Everything that
counts requests in flight reads this account and nothing else keeps its own:

* the routing snapshot (``StateStore.snapshot``): requests dispatched since the backend's last
  scrape *started* (the scrape cannot have seen them yet) with their estimated KV tokens, and the
  prompt tokens of requests still waiting for their first byte (prefill backlog);
* the admin view (``/admin/backends``);
* the two Prometheus gauges ``quantroute_in_flight_requests`` and
  ``quantroute_backend_in_flight_requests``, read from here when scraped
  (:meth:`quantroute.telemetry.Telemetry.watch_in_flight`).

Pure bookkeeping: the clock is injected, nothing here does I/O.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

from quantroute.base import Clock


@dataclass(eq=False, slots=True)
class Lease:
    """One request in flight to one backend."""

    backend_id: str
    number: int
    dispatched_at: float
    kv_tokens: int
    prompt_tokens: int
    owner: InFlight
    prefilling: bool = True
    released: bool = False
    first_byte_at: float | None = None
    """When the response started (the account's clock); None before that."""

    def first_byte(self) -> None:
        """The response has started: its prompt is no longer prefill backlog."""
        if self.prefilling:
            self.first_byte_at = self.owner.now()
        self.prefilling = False

    def release(self) -> None:
        """The request ended. Idempotent: a second call changes nothing."""
        if not self.released:
            self.released = True
            self.owner._leases.pop(self.number, None)


@dataclass(frozen=True, slots=True)
class BackendLoad:
    """What the gateway itself has in flight at one backend."""

    requests: int = 0
    unseen_requests: int = 0
    """Dispatched after the backend's last scrape started: not in its metrics yet."""
    unseen_kv_tokens: int = 0
    prefill_backlog_tokens: int = 0


class InFlight:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._numbers = itertools.count(1)
        self._leases: dict[int, Lease] = {}
        self.dispatched: Counter[str] = Counter()
        """Requests ever dispatched per backend (every attempt, retries included)."""

    def begin(self, backend_id: str, kv_tokens: int, prompt_tokens: int = 0) -> Lease:
        number = next(self._numbers)
        lease = Lease(backend_id, number, self._clock(), kv_tokens, prompt_tokens, self)
        self._leases[number] = lease
        self.dispatched[backend_id] += 1
        return lease

    def now(self) -> float:
        """The account's clock (the one ``dispatched_at`` and ``first_byte_at`` are read from)."""
        return self._clock()

    def total(self) -> int:
        return len(self._leases)

    def leases(self) -> tuple[Lease, ...]:
        return tuple(self._leases.values())

    def loads(self, unseen_since: dict[str, float | None]) -> dict[str, BackendLoad]:
        """Per backend: its load, counting as unseen what was dispatched at or after
        ``unseen_since[backend]`` (the start of its last successful scrape; None: never scraped)."""
        acc: dict[str, list[int]] = {}
        for lease in self._leases.values():
            row = acc.setdefault(lease.backend_id, [0, 0, 0, 0])
            row[0] += 1
            since = unseen_since.get(lease.backend_id)
            if since is None or lease.dispatched_at >= since:
                row[1] += 1
                row[2] += lease.kv_tokens
            if lease.prefilling:
                row[3] += lease.prompt_tokens
        return {k: BackendLoad(*v) for k, v in acc.items()}
