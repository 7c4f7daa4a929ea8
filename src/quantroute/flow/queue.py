"""The flow-control queue's ordering and admission: pure bookkeeping, the clock injected.

One queue per group (or per model name outside groups). Order: interactive before batch; within
a latency class, the key's ``priority`` (higher first); then first come, first served. A full
queue admits a request only if it outranks the lowest one queued, which is evicted (its waiter
is answered ``queue_full``); otherwise the request is refused at once. Each ticket carries its
deadline (``max_wait_s`` after it was queued).

Nothing here waits, sleeps or knows about asyncio: :mod:`quantroute.flow.control` attaches a
waiter to each ticket (``item``) and decides when the head of a queue may go.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from quantroute.base import Clock
from quantroute.flow.settings import FlowControlConfig

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Ticket(Generic[T]):
    """One request waiting in one group's queue."""

    group: str
    batch: bool
    priority: int
    number: int
    enqueued_at: float
    deadline: float
    item: T
    """What the async layer waits on (never read here)."""

    @property
    def rank(self) -> tuple[int, int, int]:
        """Sort key: lower goes first."""
        return (int(self.batch), -self.priority, self.number)

    @property
    def latency_class(self) -> str:
        return "batch" if self.batch else "interactive"


@dataclass(frozen=True, slots=True)
class Admission(Generic[T]):
    """What ``admit`` did: the new ticket (None: refused, the queue is full of requests that
    rank as high or higher) and the ticket it evicted to make room, if any."""

    ticket: Ticket[T] | None
    evicted: Ticket[T] | None = None


@dataclass(eq=False)
class _Group(Generic[T]):
    tickets: list[Ticket[T]] = field(default_factory=list)
    """Best first (sorted by ``rank``)."""


class FlowQueue(Generic[T]):
    def __init__(self, settings: FlowControlConfig, clock: Clock) -> None:
        self.settings = settings
        self._clock = clock
        self._numbers = itertools.count()
        self._groups: dict[str, _Group[T]] = {}

    def configure(self, settings: FlowControlConfig) -> None:
        """New bounds for tickets queued from now on (a reload); queued tickets keep theirs."""
        self.settings = settings

    def admit(self, group: str, item: T, *, batch: bool, priority: int = 0) -> Admission[T]:
        now = self._clock()
        ticket = Ticket(
            group, batch, priority, next(self._numbers), now, now + self.settings.max_wait_s, item
        )
        queue = self._groups.setdefault(group, _Group())
        evicted = None
        if len(queue.tickets) >= self.settings.max_queue_length:
            lowest = queue.tickets[-1]
            if ticket.rank[:2] >= lowest.rank[:2]:
                return Admission(None)
            evicted = queue.tickets.pop()
        bisect.insort(queue.tickets, ticket, key=lambda t: t.rank)
        return Admission(ticket, evicted)

    def waiting(self, group: str) -> list[Ticket[T]]:
        """The group's tickets, best first (a copy: safe to remove while iterating)."""
        queue = self._groups.get(group)
        return [] if queue is None else list(queue.tickets)

    def remove(self, ticket: Ticket[T]) -> bool:
        """Take ``ticket`` out (dispatched, timed out, client gone); False if it was not in."""
        queue = self._groups.get(ticket.group)
        if queue is None or ticket not in queue.tickets:
            return False
        queue.tickets.remove(ticket)
        if not queue.tickets:
            del self._groups[ticket.group]
        return True

    def remaining_s(self, ticket: Ticket[T]) -> float:
        """Time left before ``ticket``'s deadline (0 when it has passed)."""
        return max(0.0, ticket.deadline - self._clock())

    def waited_s(self, ticket: Ticket[T]) -> float:
        return max(0.0, self._clock() - ticket.enqueued_at)

    def expired(self) -> list[Ticket[T]]:
        """Tickets whose deadline has passed, in queue order."""
        now = self._clock()
        return [t for q in self._groups.values() for t in q.tickets if t.deadline <= now]

    def depth(self, group: str) -> int:
        queue = self._groups.get(group)
        return 0 if queue is None else len(queue.tickets)

    def groups(self) -> list[str]:
        return list(self._groups)

    def __len__(self) -> int:
        return sum(len(q.tickets) for q in self._groups.values())

    def admin(self) -> dict[str, dict[str, object]]:
        """Per group: depth, depth per latency class, the oldest wait (seconds)."""
        view: dict[str, dict[str, object]] = {}
        for name, queue in self._groups.items():
            classes = {"interactive": 0, "batch": 0}
            for t in queue.tickets:
                classes[t.latency_class] += 1
            oldest = max(self.waited_s(t) for t in queue.tickets)
            view[name] = {"depth": len(queue.tickets), **classes, "oldest_wait_s": round(oldest, 3)}
        return view
