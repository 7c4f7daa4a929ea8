"""One try at one backend, and its accounting: in-flight lease, time to first byte, outcome.

An attempt holds a :class:`~quantroute.state.inflight.Lease` from dispatch until it ends, and
ends exactly once: :meth:`Attempt.finish` (answered: status and token usage counted) or
:meth:`Attempt.give_up` (failed before the first byte; another backend may be tried).
:meth:`Attempt.release` is the idempotent safety net the forwarder calls in ``finally``.

Every ending also tells passive health what the attempt showed about the backend (an
:class:`~quantroute.resilience.outcomes.AttemptOutcome`) and, for a good answer, its latencies:
time to first token and time per output token.

Both ends report to the attempt's trail (its span: status, ``first_byte``, ``retry``,
``continuation``). The request's trail is settled once the client's answer is over, from the
last attempt (:meth:`~quantroute.proxy.context.RequestContext.settle`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from quantroute.config import BackendConfig
from quantroute.core.latency import LatencyEstimate
from quantroute.observe.trail import NO_ATTEMPT
from quantroute.observe.trail import Attempt as AttemptTrail
from quantroute.proxy.sse import Usage
from quantroute.resilience.outcomes import AttemptOutcome, classify_status, retry_after_seconds
from quantroute.resilience.passive import PassiveHealthMonitor
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
    health: PassiveHealthMonitor | None = None
    number: int = 0
    """0 for the decision's choice, 1.. for retries."""
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    first_at: float | None = None
    status: int | None = None
    """How it ended: the HTTP status relayed, 499 for a client that left; None while running
    or when given up."""
    failure: str | None = None
    failure_outcome: AttemptOutcome | None = None
    """What a given-up attempt showed (a refused connection does not count as a retry)."""
    usage: Usage | None = None
    error: str | None = None
    """What went wrong, for the trail (``client_disconnected``, ``upstream_stream_error``)."""
    trail: AttemptTrail = NO_ATTEMPT
    backend_id: str = field(init=False, default="")
    """``backend.id``, kept: read about seven times per request."""
    sent_at: float | None = field(init=False, default=None)
    """When it was sent, on passive health's clock (None without passive health)."""
    prior: LatencyEstimate | None = None
    """The decision's latency estimate for this backend: its prior split is what the observed
    TTFT is judged against (None: no estimate, e.g. a pooling request)."""
    ended: bool = field(init=False, default=False)
    """Finished, given up or released: what ends it happens once."""
    load_at_answer: int | None = field(init=False, default=None)
    """The backend's requests in flight when a whole answer arrived (:meth:`answered`)."""

    def __post_init__(self) -> None:
        self.backend_id = self.backend.id
        self.sent_at = None if self.health is None else self.health.now()
        kind = "first" if self.number == 0 else "retry"
        self.telemetry.resilience.attempts.inc((self.backend_id, kind))

    def first_byte(self) -> None:
        """The backend started answering: time to first byte, and no more prefill backlog."""
        if self.lease.prefilling:
            self.first_at = time.perf_counter()
            elapsed = self.first_at - self.started
            self.telemetry.ttfb.observe((self.backend_id,), elapsed)
            self.lease.first_byte()
            self.trail.first_byte()

    def answered(self) -> None:
        """A whole (non-stream) answer is in hand: the backend's part is over, so the in-flight
        lease goes now; :meth:`finish` counts the rest once the client has the answer."""
        self.first_byte()
        self.load_at_answer = self.lease.account.requests
        self.lease.release()

    def finish(
        self,
        status: int,
        usage: Usage | None = None,
        *,
        outcome: AttemptOutcome | None = None,
        retry_after: str | None = None,
        error: str | None = None,
        then: str | None = None,
    ) -> None:
        """The attempt answered the client (or the client left): count it and end it.

        ``outcome`` defaults to what ``status`` says (499: the client left, which says nothing
        about the backend). ``error`` names what went wrong when the status alone does not (a
        broken stream), ``then`` what the request does next (``"continuation"``). Once: an
        attempt already ended changes nothing."""
        if self.ended:
            return
        self.status, self.usage = status, usage
        t = self.telemetry
        b, g = self.backend_id, self.group
        t.requests.inc((b, g, str(status)))
        if usage is not None:
            t.prompt_tokens.inc((b, g), usage.prompt_tokens)
            t.completion_tokens.inc((b, g), usage.completion_tokens)
        if status == CLIENT_CLOSED:
            self.error = error or "client_disconnected"
            self.trail.end(None, error=self.error, then=then)
        else:
            self.error = error
            self.trail.end(status, error=error, then=then)
        if outcome is None:
            outcome = (
                AttemptOutcome.CLIENT_GONE if status == CLIENT_CLOSED else classify_status(status)
            )
        self._report(outcome, retry_after)
        if outcome is AttemptOutcome.OK and usage is not None:
            self._latencies(usage.completion_tokens)
        self.release()

    def give_up(
        self,
        reason: str,
        outcome: AttemptOutcome,
        retry_after: str | None = None,
        *,
        status: int | None = None,
        error: str | None = None,
        retry: bool = True,
    ) -> None:
        """Failed before the first byte (connect error, 5xx, 429): counted as a retry, ended.
        ``outcome`` is what it showed passive health, ``status`` the backend's (None if it was
        never reached), ``error`` the kind of failure for the trail; ``retry`` whether another
        backend is tried next."""
        self.failure = reason
        self.failure_outcome = outcome
        self.telemetry.retries.labels(self.backend_id).inc()
        self._report(outcome, retry_after)
        self.trail.end(status, error=error, then="retry" if retry else None)
        self.release()

    def release(self) -> None:
        """Ends it (its lease released) without counting anything: the forwarder's safety net."""
        self.ended = True
        self.lease.release()

    def _report(self, outcome: AttemptOutcome, retry_after: str | None) -> None:
        if self.health is not None:
            retry_after_s = retry_after_seconds(retry_after)
            self.health.outcome(self.backend_id, outcome, retry_after_s, self.sent_at)

    def _latencies(self, tokens: int) -> None:
        if self.health is None or tokens <= 0:
            return
        ended = time.perf_counter()
        load = self.lease.account.requests if self.load_at_answer is None else self.load_at_answer
        if self.stream and self.first_at is not None:
            per_token = (ended - self.first_at) / (tokens - 1) if tokens > 1 else None
            ttft = self.first_at - self.started
            prior = self.prior
            self.health.latency(
                self.backend_id,
                ttft_s=ttft,
                per_token_s=per_token,
                load=load,
                prior_queue_s=None if prior is None else prior.prior_queue_ms / 1000.0,
                prior_prefill_s=None if prior is None else prior.prior_prefill_ms / 1000.0,
            )
        elif not self.stream:
            # The whole answer arrives at the end: time per token includes the prefill.
            if self.first_at is not None:  # when it arrived, not when the client had it
                ended = self.first_at
            per_token = (ended - self.started) / tokens
            self.health.latency(self.backend_id, per_token_s=per_token, load=load)
