"""The per-request context: one object carried through decide → forward → relay → account.

The HTTP edge builds it (:meth:`quantroute.server.gateway.Gateway.handle`); the decision step
fills in :attr:`RequestContext.decision`; the forwarder records each :class:`~.attempt.Attempt`
on it; the relay and the accounting read it. Later concerns (caller identity, a trace span,
continuation after a failed stream, passive health outcomes, new API kinds) add a field here
rather than a parameter to every function on the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.types import Receive

from quantroute.core.model import Decision, RequestFeatures
from quantroute.observe.trail import NO_TRAIL, Trail
from quantroute.proxy.parse import ParsedRequest

if TYPE_CHECKING:
    from quantroute.proxy.attempt import Attempt
    from quantroute.proxy.continuation import StreamContinuation
    from quantroute.proxy.exchange import Exchange


@dataclass(eq=False, slots=True)
class RequestContext:
    parsed: ParsedRequest
    forward_headers: Mapping[str, str]
    """Client headers passed on to the backend (``Authorization``)."""
    receive: Receive
    """The ASGI ``receive`` of the client connection: how a disconnect is noticed."""
    exchange: Exchange
    """What this request's API changes on the path: upstream path and body, tap, usage."""
    decision: Decision | None = None
    attempts: list[Attempt] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """``backend: what went wrong`` for each attempt that was given up before the first byte."""
    continuation: StreamContinuation | None = None
    """A stream's continuation guard (None: not a stream, or continuation is off)."""
    trail: Trail = NO_TRAIL
    """The request's access-log record and spans (a shared no-op when neither is configured)."""

    def settle(self) -> None:
        """The client's answer is over: the request's trail takes the last attempt's outcome
        (for a continued stream, the continuation's) and the tokens every attempt counted (as
        the token metrics do). Idempotent; an error answered by the gateway itself is settled
        at the HTTP edge instead."""
        if not self.attempts:
            return
        last = self.attempts[-1]
        usages = [a.usage for a in self.attempts if a.usage is not None]
        self.trail.finish(
            last.status if last.status is not None else 502,
            error=last.error,
            prompt_tokens=sum(u.prompt_tokens for u in usages) if usages else None,
            completion_tokens=sum(u.completion_tokens for u in usages) if usages else None,
            answered=last.trail,
        )

    @property
    def features(self) -> RequestFeatures:
        return self.parsed.features

    @property
    def routed(self) -> Decision:
        assert self.decision is not None, "the decision step runs before forwarding"
        return self.decision

    @property
    def group(self) -> str:
        """The metrics label: the group the request was routed in, else the model it named."""
        decision = self.decision
        return (decision.group if decision else None) or self.features.model
