"""One try at one backend, and its accounting: in-flight lease, time to first byte, outcome.

An attempt holds a :class:`~quantroute.state.inflight.Lease` from dispatch until it ends, and
ends exactly once: :meth:`Attempt.finish` (answered: status and token usage counted) or
:meth:`Attempt.give_up` (failed before the first byte; another backend may be tried).
:meth:`Attempt.release` is the idempotent safety net the forwarder calls in ``finally``.

Both ends report to the attempt's trail (its span: status, ``first_byte``, ``retry``,
``continuation``). The request's trail is settled once the client's answer is over, from the
last attempt (:meth:`~quantroute.proxy.context.RequestContext.settle`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from quantroute.config import BackendConfig
from quantroute.observe.trail import NO_ATTEMPT
from quantroute.observe.trail import Attempt as AttemptTrail
from quantroute.proxy.sse import Usage
from quantroute.state.inflight import Lease
from quantroute.telemetry import Telemetry

CLIENT_CLOSED = 499
"""The status recorded for a request whose client went away (nginx's convention)."""


@dataclass(eq=False)
class Attempt:
    backend: BackendConfig
    lease: Lease
    strip_usage: bool
    group: str
    telemetry: Telemetry
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    """How it ended: the HTTP status relayed, 499 for a client that left; None while running
    or when given up."""
    failure: str | None = None
    usage: Usage | None = None
    error: str | None = None
    """What went wrong, for the trail (``client_disconnected``, ``upstream_stream_error``)."""
    trail: AttemptTrail = NO_ATTEMPT

    @property
    def backend_id(self) -> str:
        return self.backend.id

    def first_byte(self) -> None:
        """The backend started answering: time to first byte, and no more prefill backlog."""
        if self.lease.prefilling:
            elapsed = time.perf_counter() - self.started
            self.telemetry.child(self.telemetry.ttfb, self.backend_id).observe(elapsed)
            self.lease.first_byte()
            self.trail.first_byte()

    def finish(
        self,
        status: int,
        usage: Usage | None = None,
        *,
        error: str | None = None,
        then: str | None = None,
    ) -> None:
        """The attempt answered the client (or the client left): count it and end it.
        ``error`` names what went wrong when the status alone does not (a broken stream),
        ``then`` what the request does next (``"continuation"``)."""
        self.status, self.usage = status, usage
        t = self.telemetry
        b, g = self.backend_id, self.group
        t.child(t.requests, b, g, str(status)).inc()
        if usage is not None:
            t.child(t.prompt_tokens, b, g).inc(usage.prompt_tokens)
            t.child(t.completion_tokens, b, g).inc(usage.completion_tokens)
        if status == CLIENT_CLOSED:
            self.error = error or "client_disconnected"
            self.trail.end(None, error=self.error, then=then)
        else:
            self.error = error
            self.trail.end(status, error=error, then=then)
        self.release()

    def give_up(
        self,
        reason: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry: bool = True,
    ) -> None:
        """Failed before the first byte (connect error, 5xx): counted as a retry, ended.
        ``status`` is the backend's (None if it was never reached), ``error`` the kind of
        failure for the trail; ``retry`` whether another backend is tried next."""
        self.failure = reason
        self.telemetry.retries.labels(self.backend_id).inc()
        self.trail.end(status, error=error, then="retry" if retry else None)
        self.release()

    def release(self) -> None:
        self.lease.release()
