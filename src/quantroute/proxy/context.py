"""The per-request context: one object carried through decide → forward → relay → account.

The HTTP edge builds it (:meth:`quantroute.server.gateway.Gateway.handle`); the decision step
fills in :attr:`RequestContext.decision`; the forwarder records each :class:`~.attempt.Attempt`
on it; the relay and the accounting read it. Later concerns (caller identity, a trace span,
continuation after a failed stream, passive health outcomes, new API kinds) add a field here
rather than a parameter to every function on the path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    """Headers sent to every backend (``Content-Type``; never the client's ``Authorization``)."""
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
    request_id: str = ""
    """The id the client gets in ``x-request-id`` and error bodies; log lines carry it."""
    credentials: Callable[[str], Mapping[str, str]] = lambda _backend_id: {}
    """The gateway's own headers for a backend (its ``Authorization``), by backend id."""
    show_decision: bool = True
    """Whether the caller may see ``x-quantroute-decision`` (``access.decision_header``): the
    header is built only then (the access middleware still strips it for anyone else)."""
    handed_over: bool = False
    """Set when the response took the request over: it calls :meth:`done` once it is sent (a
    stream: when it ends, however it ends)."""
    _on_done: list[Callable[[RequestContext], None]] = field(default_factory=list)
    _done: bool = False
    _decision_header: str | None = None
    features: RequestFeatures = field(init=False)
    """``parsed.features``, kept: read about seven times per request."""

    def __post_init__(self) -> None:
        self.features = self.parsed.features

    def decision_header(self) -> str:
        """``x-quantroute-decision``: the decision explained, at most 1 KB; built once (the
        gateway builds it while the request waits for its backend)."""
        header = self._decision_header
        if header is None:
            header = self._decision_header = self.routed.explain()[:1024]
        return header

    def upstream_headers(self, backend_id: str) -> Mapping[str, str]:
        extra = self.credentials(backend_id)
        return {**self.forward_headers, **extra} if extra else self.forward_headers

    def on_done(self, callback: Callable[[RequestContext], None]) -> None:
        self._on_done.append(callback)

    def done(self) -> None:
        """The request is over (answered, failed or abandoned; a continued stream: when the
        continuation ends): the trail is settled, then the callbacks run (the key's quota), once.
        """
        if self._done:
            return
        self._done = True
        if self.trail is not NO_TRAIL:  # nothing to settle without an access log or tracing
            self._settle_trail()
        for callback in self._on_done:
            callback(self)

    def _settle_trail(self) -> None:
        """The trail takes the last attempt's outcome (for a continued stream, the
        continuation's) and the tokens every attempt counted (as the token metrics do). When no
        attempt answered (none was made, or every one was given up) the gateway answers with an
        error, and the HTTP edge settles the trail with it instead (``Trail.finish`` keeps the
        first outcome it is given)."""
        last = self.attempts[-1] if self.attempts else None
        if last is None or last.status is None:
            return
        prompt: int | None = None
        completion: int | None = None
        for a in self.attempts:  # a loop, not two generators: once per request
            if a.usage is not None:
                prompt = (prompt or 0) + a.usage.prompt_tokens
                completion = (completion or 0) + a.usage.completion_tokens
        self.trail.finish(
            last.status,
            error=last.error,
            prompt_tokens=prompt,
            completion_tokens=completion,
            answered=last.trail,
        )

    def used_tokens(self) -> int | None:
        """Tokens the backends reported for this request, over every attempt (a stream continued
        on another backend: what the broken one generated plus the continuation); 0 when no
        backend was reached; None when one was but reported no usage (the client left, an
        error, no usage field)."""
        used = [a.usage for a in self.attempts if a.usage is not None]
        if used:
            return sum(u.prompt_tokens + u.completion_tokens for u in used)
        return 0 if all(a.failure is not None for a in self.attempts) else None

    @property
    def routed(self) -> Decision:
        assert self.decision is not None, "the decision step runs before forwarding"
        return self.decision

    @property
    def group(self) -> str:
        """The metrics label: the group the request was routed in, else the model it named."""
        decision = self.decision
        return (decision.group if decision else None) or self.features.model
