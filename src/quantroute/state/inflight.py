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

Per backend the figures are kept up to date as leases come and go, so reading them costs the
same with 1 or 500 requests in flight (it is read on every routing decision). Pure bookkeeping:
the clock is injected, nothing here does I/O.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from quantroute.base import Clock, quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class BackendLoad:
    """What the gateway itself has in flight at one backend."""

    requests: int = 0
    unseen_requests: int = 0
    """Dispatched after the backend's last scrape started: not in its metrics yet."""
    unseen_kv_tokens: int = 0
    prefill_backlog_tokens: int = 0


@dataclass(eq=False, slots=True)
class Account:
    """One backend's running figures, kept as leases come and go (read, never written, outside
    this module: the routing snapshot reads them directly, per backend per request)."""

    requests: int = 0
    prefill_tokens: int = 0
    unseen: dict[int, Lease] = field(default_factory=dict)
    unseen_kv_tokens: int = 0
    changed: set[str] = field(default_factory=set)
    """Its account's :attr:`InFlight.changed` (each change names the backend there)."""

    def load(self) -> BackendLoad:
        return BackendLoad(
            self.requests, len(self.unseen), self.unseen_kv_tokens, self.prefill_tokens
        )


@dataclass(eq=False, slots=True)
class Lease:
    """One request in flight to one backend."""

    backend_id: str
    number: int
    dispatched_at: float
    kv_tokens: int
    prompt_tokens: int
    account: Account
    clock: Clock
    prefilling: bool = True
    released: bool = False
    first_byte_at: float | None = None
    """When the response started (the account's clock); None before that."""
    on_release: Callable[[], None] | None = None
    """Told once the request has left the account (flow control: room may have come)."""

    def first_byte(self) -> None:
        """The response has started: its prompt is no longer prefill backlog."""
        if self.prefilling:
            self.first_byte_at = self.clock()
            self._prefill_done()
            self.account.changed.add(self.backend_id)

    def _prefill_done(self) -> None:
        self.prefilling = False
        self.account.prefill_tokens -= self.prompt_tokens

    def release(self) -> None:
        """The request ended. Idempotent: a second call changes nothing. A request that ends
        before its first byte leaves the prefill backlog without a ``first_byte_at``."""
        if self.released:
            return
        self.released = True
        if self.prefilling:
            self._prefill_done()
        account = self.account
        account.requests -= 1
        if account.unseen.pop(self.number, None) is not None:
            account.unseen_kv_tokens -= self.kv_tokens
        account.changed.add(self.backend_id)
        if self.on_release is not None:
            self.on_release()


class InFlight:
    def __init__(self, clock: Clock, on_release: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._on_release = on_release
        self._numbers = itertools.count(1)
        self.accounts: dict[str, Account] = {}
        """Per backend with a lease ever taken (until :meth:`forget`): read-only outside."""
        self.dispatched: Counter[str] = Counter()
        """Requests ever dispatched per backend (every attempt, retries included)."""
        self.changed: set[str] = set()
        """Backends whose figures changed since the routing snapshot last took this set (it
        clears it: its one reader), so that it rebuilds only theirs."""

    def begin(self, backend_id: str, kv_tokens: int, prompt_tokens: int = 0) -> Lease:
        account = self.accounts.get(backend_id)
        if account is None:
            account = self.accounts[backend_id] = Account(changed=self.changed)
        number = next(self._numbers)
        lease = Lease(
            backend_id,
            number,
            self._clock(),
            kv_tokens,
            prompt_tokens,
            account,
            self._clock,
            on_release=self._on_release,
        )
        account.requests += 1
        account.prefill_tokens += prompt_tokens
        account.unseen[number] = lease
        account.unseen_kv_tokens += kv_tokens
        self.changed.add(backend_id)
        self.dispatched[backend_id] += 1
        return lease

    def count(self, backend_id: str) -> int:
        """Requests in flight at one backend now."""
        account = self.accounts.get(backend_id)
        return 0 if account is None else account.requests

    def forget(self, backend_id: str) -> None:
        """Drop the account of a backend that left, once nothing is in flight there (its
        leases hold the account they count in: one still open keeps it)."""
        account = self.accounts.get(backend_id)
        if account is not None and account.requests == 0:
            del self.accounts[backend_id]
            self.changed.add(backend_id)

    def now(self) -> float:
        """The account's clock (the one ``dispatched_at`` and ``first_byte_at`` are read from)."""
        return self._clock()

    def scraped(self, backend_id: str, started_at: float) -> None:
        """A scrape that started at ``started_at`` succeeded: it saw what was sent before then."""
        account = self.accounts.get(backend_id)
        if account is None:
            return
        for number, lease in list(account.unseen.items()):
            if lease.dispatched_at < started_at:
                del account.unseen[number]
                account.unseen_kv_tokens -= lease.kv_tokens
                self.changed.add(backend_id)

    def total(self) -> int:
        return sum(a.requests for a in self.accounts.values())

    def idle(self) -> bool:
        """Whether no request is in flight at any backend (a busy fleet answers at its first
        account)."""
        return not any(account.requests for account in self.accounts.values())

    def loads(self) -> dict[str, BackendLoad]:
        return {k: a.load() for k, a in self.accounts.items()}
