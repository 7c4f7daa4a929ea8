"""The thin async layer of flow control: a request waits on a future; the queue is re-tried when
the state changes.

No loop polls. The state store calls :meth:`FlowControl.pump` when something that can make room
happens: a fresh scrape of a backend, a request in flight ending (its lease released), the
backend set changing. ``pump`` walks each group's queue best first and asks each ticket's
``attempt`` for a decision on the current snapshot: a routed decision wakes the waiter with it
(and the snapshot counts that request, so one fresh scrape does not send the whole queue to the
same backend); ``None`` (still saturated) stops that group's walk, so a lower-ranked request
never overtakes a higher one; a decision that cannot route for another reason (the backends went
down) wakes the waiter too, which answers it as the router does.

Each waiter bounds its own wait with its ticket's deadline and races the client's disconnect: a
client that leaves is taken out of the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from starlette.types import Receive

from quantroute.base import Clock
from quantroute.core.model import Decision, Snapshot
from quantroute.core.saturation import with_dispatched
from quantroute.errors import ClientDisconnected, QueueRefused
from quantroute.flow.metrics import FlowMetrics
from quantroute.flow.queue import FlowQueue, Ticket
from quantroute.flow.settings import FlowControlConfig
from quantroute.proxy.disconnect import race_disconnect

Attempt = Callable[[Snapshot], Decision | None]
"""A queued request's decision on a snapshot; None while every backend it may use is saturated."""


@dataclass(eq=False, slots=True)
class _Waiter:
    attempt: Attempt
    kv_tokens: int
    future: asyncio.Future[Decision]


class FlowControl:
    def __init__(
        self,
        settings: FlowControlConfig,
        snapshot: Callable[[], Snapshot],
        metrics: FlowMetrics,
        clock: Clock,
    ) -> None:
        self.queue: FlowQueue[_Waiter] = FlowQueue(settings, clock)
        self._snapshot = snapshot
        self.metrics = metrics
        self._pumping = False

    def configure(self, settings: FlowControlConfig) -> None:
        self.queue.configure(settings)

    def busy(self, group: str) -> bool:
        """Requests wait in this group's queue (a new one joins them rather than overtake)."""
        return self.queue.depth(group) > 0

    async def wait(
        self,
        group: str,
        attempt: Attempt,
        receive: Receive,
        *,
        kv_tokens: int,
        batch: bool,
        priority: int = 0,
    ) -> Decision:
        """Queue the request and wait for a decision that routes (or fails for good). Raises
        :class:`QueueRefused` (full, evicted, timed out) or :class:`ClientDisconnected`."""
        waiter = _Waiter(attempt, kv_tokens, asyncio.get_running_loop().create_future())
        admission = self.queue.admit(group, waiter, batch=batch, priority=priority)
        if admission.evicted is not None:
            self._evict(admission.evicted)
        ticket = admission.ticket
        if ticket is None:
            self.metrics.rejected.labels(group, "queue_full").inc()
            raise self._refusal("queue_full", f"The queue for '{group}' is full.")
        self._publish(group)
        self.pump()
        with self._settles(ticket) as outcome:
            try:
                async with asyncio.timeout(self.queue.remaining_s(ticket)):
                    decision = await race_disconnect(receive, waiter.future)
            except TimeoutError:
                outcome[0] = "timeout"
                self.metrics.rejected.labels(group, "queue_timeout").inc()
                raise self._refusal(
                    "queue_timeout",
                    f"No backend of '{group}' had room within "
                    f"{self.queue.settings.max_wait_s:g} s.",
                ) from None
            except ClientDisconnected:
                outcome[0] = "disconnected"
                raise
            except QueueRefused:
                outcome[0] = "evicted"
                raise
            outcome[0] = "dispatched" if decision.chosen is not None else "refused"
            return decision

    @contextlib.contextmanager
    def _settles(self, ticket: Ticket[_Waiter]) -> Iterator[list[str]]:
        """However the wait ends: out of the queue, its wait observed under its outcome."""
        outcome = ["disconnected"]  # a cancellation from outside ends it like a departure
        try:
            yield outcome
        finally:
            self.queue.remove(ticket)
            self.metrics.wait.labels(ticket.group, outcome[0]).observe(self.queue.waited_s(ticket))
            self._publish(ticket.group)

    def pump(self) -> None:
        """Wake every queued request that can go now, best first per group (see the module)."""
        if self._pumping or not len(self.queue):
            return
        self._pumping = True
        try:
            snapshot = self._snapshot()
            for group in self.queue.groups():
                snapshot = self._pump_group(group, snapshot)
                self._publish(group)
        finally:
            self._pumping = False

    def _pump_group(self, group: str, snapshot: Snapshot) -> Snapshot:
        for ticket in self.queue.waiting(group):
            waiter = ticket.item
            if waiter.future.done():  # cancelled: its own finally takes it out
                continue
            decision = waiter.attempt(snapshot)
            if decision is None:
                break
            self.queue.remove(ticket)
            waiter.future.set_result(decision)
            if decision.chosen is not None:
                snapshot = with_dispatched(snapshot, decision.chosen, waiter.kv_tokens)
        return snapshot

    def _evict(self, ticket: Ticket[_Waiter]) -> None:
        self.queue.remove(ticket)
        self.metrics.rejected.labels(ticket.group, "queue_full").inc()
        if not ticket.item.future.done():
            ticket.item.future.set_exception(
                self._refusal("queue_full", f"The queue for '{ticket.group}' is full.")
            )

    def _refusal(self, code: str, message: str) -> QueueRefused:
        s = self.queue.settings
        return QueueRefused(
            message, code=code, status=s.reject_status, retry_after_s=s.retry_after_s
        )

    def _publish(self, group: str) -> None:
        tickets = self.queue.waiting(group)
        batch = sum(t.batch for t in tickets)
        self.metrics.depth.labels(group, "interactive").set(len(tickets) - batch)
        self.metrics.depth.labels(group, "batch").set(batch)

    def admin(self) -> dict[str, object]:
        s = self.queue.settings
        return {
            "settings": s.model_dump(),
            "waiting": len(self.queue),
            "groups": self.queue.admin(),
        }
