"""The forwarding step: try the decision's ranked backends in turn until one answers.

Retry rule: only where the backend did no work that goes on, and only before the first byte:
a connection refused, or broken before an answer began (a closed connection aborts a vLLM
request), or a 5xx/429 answer. Never after a timeout on a request that was sent (the backend
may still be generating it). Each retry spends the retry budget (at most a share of recent
requests, so a fleet-wide failure does not double the load); with the budget spent, the last
answer passes through. A refused connection is free: that attempt cost its backend nothing, so
the next backend is tried without spending the budget or one of ``policy.retries``. A stream
counts as answered once its first chunk arrived: a backend that dies between its headers and its
first chunk is retried like one that never answered.

When every attempt fails to connect, the client gets 502 ``upstream_unavailable``; a timeout is
504 ``upstream_timeout``; an answer over its size cap or one that cannot be relayed is 502. Those
messages name no backend and no library error (both are logged under the request id); a
backend's own error answer is relayed as :mod:`.upstream_errors` says.
A client that disconnects before the first byte cancels the upstream request (the attempt is
counted as 499); the attempt's in-flight lease is released in ``finally`` whatever happens (a
whole answer's as soon as it is read: the rest of its accounting runs once it is sent,
:func:`~quantroute.proxy.relay.relay_body`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.responses import Response

from quantroute.base import Clock
from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.filters import request_kv_tokens
from quantroute.core.latency import LatencyEstimate
from quantroute.core.model import RequestFeatures
from quantroute.core.prefix import uncached_tokens
from quantroute.errors import (
    BadUpstreamResponse,
    ClientDisconnected,
    RequestError,
    UpstreamConnectError,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamTimedOut,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from quantroute.proxy.attempt import CLIENT_CLOSED, Attempt
from quantroute.proxy.context import RequestContext
from quantroute.proxy.disconnect import race_disconnect
from quantroute.proxy.relay import relay_body, relay_stream
from quantroute.proxy.upstream import Deadlines, Upstream, UpstreamResponse
from quantroute.resilience.budget import RetryBudget
from quantroute.resilience.outcomes import AttemptOutcome, classify_status
from quantroute.resilience.passive import PassiveHealthMonitor
from quantroute.state.inflight import InFlight
from quantroute.state.prefix import PrefixTracker
from quantroute.telemetry import Telemetry

log = logging.getLogger("quantroute.proxy")
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


def deadlines(
    config: GatewayConfig, features: RequestFeatures, backend: BackendConfig
) -> Deadlines:
    """Time limits for one attempt: a stream's gaps are bounded; a non-streamed answer (sent
    whole when generation ends) gets a deadline sized from what it may generate."""
    t = config.policy.upstream_timeouts
    cap = config.resilience.upstream.max_body_bytes
    if features.stream:
        return Deadlines(t.connect_s, t.first_byte_s, t.stream_idle_s, t.total_s, cap)
    tokens = features.max_tokens or max(1, backend.max_seq_len - features.prompt_tokens)
    whole = min(t.total_s, t.nonstream_base_s + tokens * t.nonstream_per_token_s)
    return Deadlines(t.connect_s, whole, None, whole, cap)


class Forwarder:
    def __init__(
        self,
        config: GatewayConfig,
        upstream: Upstream,
        inflight: InFlight,
        telemetry: Telemetry,
        backends: Mapping[str, BackendConfig],
        prefix: PrefixTracker | None = None,
        *,
        health: PassiveHealthMonitor | None = None,
        budget: RetryBudget | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.policy = config.policy
        self.upstream = upstream
        self.inflight = inflight
        self.telemetry = telemetry
        self.backends = dict(backends)
        self.prefix = prefix
        self.health = health
        self.budget = budget
        self._clock = clock or (lambda: 0.0)

    async def forward(self, ctx: RequestContext) -> Response:
        ranked = [b for b in ctx.routed.ranked if b in self.backends]
        if self.budget is not None:
            self.budget.request(self._clock())
        paid = 0
        for number, backend_id in enumerate(ranked):
            backend = self.backends[backend_id]
            body, strip_usage = ctx.exchange.body_for(backend.served_model_name)
            attempt = self._begin(ctx, backend, strip_usage, number)
            left = number < len(ranked) - 1
            response = await self._try(
                ctx, attempt, body, more=left and paid < self.policy.retries, more_free=left
            )
            if response is not None:
                return response
            paid += attempt.failure_outcome is not AttemptOutcome.CONNECT_ERROR
        raise _unreachable(ctx)

    def url_for(self, backend: BackendConfig, ctx: RequestContext) -> str:
        return backend.url.rstrip("/") + ctx.exchange.path

    def deadlines_for(self, backend: BackendConfig, ctx: RequestContext) -> Deadlines:
        return deadlines(self.config, ctx.features, backend)

    def begin_attempt(
        self, ctx: RequestContext, backend: BackendConfig, strip_usage: bool, number: int = 0
    ) -> Attempt:
        """A continuation's attempt (see :mod:`quantroute.proxy.continuation`)."""
        return self._begin(ctx, backend, strip_usage, number, continuation=True)

    def _begin(
        self,
        ctx: RequestContext,
        backend: BackendConfig,
        strip_usage: bool,
        number: int,
        *,
        continuation: bool = False,
    ) -> Attempt:
        """``number``: 0 for the decision's choice, 1.. for retries (the attempts metric); the
        trail numbers every try of the request from 1, continuations included."""
        features = ctx.features
        kv_tokens = request_kv_tokens(features, self.policy)
        prefill = features.prompt_tokens
        if self.prefix is not None and features.prompt is not None:
            share = self.prefix.sent(backend.id, features)
            self.telemetry.prefix_prompt_tokens.labels(backend.id).inc(features.prompt_tokens)
            self.telemetry.prefix_expected_tokens.labels(backend.id).inc(
                round(share * features.prompt_tokens)
            )
            self.telemetry.prefix_entries.labels(backend.id).set(
                self.prefix.index.entries(backend.id)
            )
            if share > 0.0:  # prefill backlog: only what the backend probably has to compute
                prefill = uncached_tokens(features.prompt_tokens, share)
        lease = self.inflight.begin(backend.id, kv_tokens, prefill)
        attempt = Attempt(
            backend,
            lease,
            strip_usage,
            ctx.group,
            self.telemetry,
            health=self.health,
            number=number,
            stream=features.stream,
            prior=None if continuation else _prior(ctx, backend.id),
        )
        tried = len(ctx.attempts) + 1
        attempt.trail = ctx.trail.attempt(tried, backend, continuation=continuation)
        ctx.attempts.append(attempt)
        return attempt

    def _may_retry(self, more: bool, *, free: bool = False) -> bool:
        """Another backend is left to try and the retry budget has room (spends it). ``free``:
        the failed attempt cost its backend nothing (connection refused), so the retry adds no
        load to a failing fleet and spends no budget."""
        if not more:
            return False
        if (
            free
            or self.budget is None
            or self.budget.try_retry(self._clock(), self.inflight.total())
        ):
            return True
        self.telemetry.resilience.retry_budget_exhausted.inc()
        return False

    def _give_up(
        self,
        ctx: RequestContext,
        attempt: Attempt,
        reason: str,
        outcome: AttemptOutcome,
        retry_after: str | None = None,
        *,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        """Given up before the first byte, and the next backend is tried (the only way here)."""
        ctx.failures.append(f"{attempt.backend_id}: {reason}")
        attempt.give_up(reason, outcome, retry_after, status=status, error=error)

    async def _try(
        self, ctx: RequestContext, attempt: Attempt, body: bytes, *, more: bool, more_free: bool
    ) -> Response | None:
        """The response for the client, or None when the next backend should be tried.

        ``more``: a retry is allowed (``policy.retries`` not used up); ``more_free``: another
        backend is left, to try after a refused connection (which does not count as a retry)."""
        url = self.url_for(attempt.backend, ctx)
        limits = deadlines(self.config, ctx.features, attempt.backend)
        # the gateway's own credentials for this backend, + traceparent when tracing
        headers = attempt.trail.headers(ctx.upstream_headers(attempt.backend_id))
        handed_over = False
        try:
            if ctx.features.stream:
                response, first = await race_disconnect(
                    ctx.receive, self._open_stream(url, body, headers, limits), deferred=True
                )
                if response.status in RETRY_STATUSES and self._may_retry(more):
                    response.close()
                    status = response.status
                    outcome = classify_status(status)
                    retry_after = response.retry_after
                    reason = f"HTTP {status}"
                    self._give_up(ctx, attempt, reason, outcome, retry_after, status=status)
                    return None
                if response.status < 400:
                    max_event = self.config.resilience.upstream.max_sse_event_bytes
                    relayed = relay_stream(ctx, attempt, response, first, max_event)
                    handed_over = True  # the relay owns the response and the attempt from here
                    return relayed
                # an error answer to a stream request is a JSON body, not a stream: whole
                status, ctype, data, retry_after = await race_disconnect(
                    ctx.receive, _read(response)
                )
            else:
                status, ctype, data, retry_after = await race_disconnect(
                    ctx.receive, self._exchange(url, body, headers, limits), deferred=True
                )
                if status in RETRY_STATUSES and self._may_retry(more):
                    outcome = classify_status(status)
                    reason = f"HTTP {status}"
                    self._give_up(ctx, attempt, reason, outcome, retry_after, status=status)
                    return None
            reply = relay_body(ctx, attempt, status, ctype, data, retry_after)
            handed_over = True  # the reply settles the attempt once it is sent
            try:
                await ctx.exchange.completed(status)  # before the client can ask for more
            except BaseException:
                reply.settle()  # it will not be sent
                raise
            return reply
        except UpstreamConnectError as exc:
            outcome = AttemptOutcome(exc.outcome)
            refused = outcome is AttemptOutcome.CONNECT_ERROR
            if self._may_retry(more_free if refused else more, free=refused):
                self._give_up(ctx, attempt, str(exc), outcome, error="upstream_connect_error")
                return None
            ctx.failures.append(f"{attempt.backend_id}: {exc}")
            attempt.failure = str(exc)  # nothing was generated: a quota is charged nothing
            unreachable = _unreachable(ctx)
            attempt.finish(502, outcome=outcome, error=unreachable.code)
            raise unreachable from None
        except UpstreamFailure as exc:
            failed = _client_error(ctx, attempt.backend_id, exc)
            attempt.finish(_status_of(exc), outcome=AttemptOutcome(exc.outcome), error=failed.code)
            raise failed from None
        except ClientDisconnected:
            attempt.finish(CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        finally:
            if not handed_over:
                attempt.release()

    async def _open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], limits: Deadlines
    ) -> tuple[UpstreamResponse, bytes | None]:
        """The response and, for a 200, its first chunk (None: the stream ended at once)."""
        response = await self.upstream.post(url, body, headers, limits)
        if response.status != 200:
            return response, None
        try:
            first = await anext(aiter(response.chunks()), None)
        except BaseException:
            response.close()
            raise
        return response, first

    async def _exchange(
        self, url: str, body: bytes, headers: Mapping[str, str], limits: Deadlines
    ) -> tuple[int, str, bytes, str | None]:
        return await _read(await self.upstream.post(url, body, headers, limits))


async def _read(response: UpstreamResponse) -> tuple[int, str, bytes, str | None]:
    """Status, content type, the whole body and Retry-After; closed if reading fails."""
    try:
        data = await response.read()
    except BaseException:
        response.close()
        raise
    return response.status, response.content_type, data, response.retry_after


def _prior(ctx: RequestContext, backend_id: str) -> LatencyEstimate | None:
    """The decision's latency estimate for this backend: what its TTFT is judged against (a
    continuation's longer prompt was not in it, so it has none)."""
    return None if ctx.decision is None else ctx.decision.latency.get(backend_id)


def _status_of(exc: UpstreamFailure) -> int:
    return 504 if isinstance(exc, UpstreamTimeout) else 502


def _unreachable(ctx: RequestContext) -> UpstreamUnavailable:
    """Every attempt failed before an answer: the details (backend ids, library errors) go to
    the log under the request id, never to the client."""
    log.warning("request %s: no backend reachable: %s", ctx.request_id, "; ".join(ctx.failures))
    return UpstreamUnavailable(
        f"Could not reach a backend; retry shortly (request id {ctx.request_id})."
    )


def _client_error(ctx: RequestContext, backend_id: str, exc: UpstreamFailure) -> RequestError:
    """The client's error for an attempt that failed without an answer to relay; what went
    wrong, and where, is logged under the request id."""
    rid = ctx.request_id
    log.warning("request %s: upstream %s failed: %s", rid, backend_id, exc)
    if isinstance(exc, UpstreamTimeout):
        return UpstreamTimedOut(
            f"The backend did not answer in time; not retried, since it may still be "
            f"generating (request id {rid})."
        )
    if isinstance(exc, UpstreamTooLarge):
        return BadUpstreamResponse(
            f"The backend's answer is larger than the gateway relays (request id {rid}).",
            code="upstream_response_too_large",
        )
    if isinstance(exc, UpstreamProtocolError):
        return BadUpstreamResponse(
            f"The backend's answer cannot be relayed (request id {rid}).",
            code="upstream_bad_response",
        )
    return UpstreamUnavailable(f"The backend failed; retry shortly (request id {rid}).")
