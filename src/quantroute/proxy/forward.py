"""The forwarding step: try the decision's ranked backends in turn until one answers.

Retry rule: before the first byte, a connect error or a 5xx moves on to the next ranked backend
(at most ``policy.retries`` more); the last backend's 5xx passes through as it is. When every
attempt fails to connect, the client gets 502 ``upstream_unavailable``. After the first byte
nothing is retried (the relay ends a broken stream with an error event).

A client that disconnects before the first byte cancels the upstream request (the attempt is
counted as 499); the attempt's in-flight lease is released in ``finally`` whatever happens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.responses import Response

from quantroute.config import BackendConfig, PolicyConfig
from quantroute.core.filters import request_kv_tokens
from quantroute.core.prefix import uncached_tokens
from quantroute.errors import ClientDisconnected, UpstreamConnectError, UpstreamUnavailable
from quantroute.proxy.attempt import CLIENT_CLOSED, Attempt
from quantroute.proxy.context import RequestContext
from quantroute.proxy.disconnect import race_disconnect
from quantroute.proxy.relay import relay_body, relay_stream
from quantroute.proxy.upstream import Upstream, UpstreamResponse
from quantroute.state.inflight import InFlight
from quantroute.state.prefix import PrefixTracker
from quantroute.telemetry import Telemetry

log = logging.getLogger("quantroute.proxy")


class Forwarder:
    def __init__(
        self,
        policy: PolicyConfig,
        upstream: Upstream,
        inflight: InFlight,
        telemetry: Telemetry,
        backends: Mapping[str, BackendConfig],
        prefix: PrefixTracker | None = None,
    ) -> None:
        self.policy = policy
        self.upstream = upstream
        self.inflight = inflight
        self.telemetry = telemetry
        self.backends = dict(backends)
        self.prefix = prefix

    async def forward(self, ctx: RequestContext) -> Response:
        ranked = [b for b in ctx.routed.ranked if b in self.backends]
        plan = ranked[: 1 + self.policy.retries]
        for number, backend_id in enumerate(plan):
            backend = self.backends[backend_id]
            body, strip_usage = ctx.exchange.body_for(backend.served_model_name)
            attempt = self._begin(ctx, backend, strip_usage)
            response = await self._try(ctx, attempt, body, last=number == len(plan) - 1)
            if response is not None:
                return response
        # The details (backend ids, library errors) go to the log, never to the client.
        log.warning("request %s: no backend reachable: %s", ctx.request_id, "; ".join(ctx.failures))
        raise UpstreamUnavailable(
            f"Could not reach a backend; retry shortly (request id {ctx.request_id})."
        )

    def url_for(self, backend: BackendConfig, ctx: RequestContext) -> str:
        return backend.url.rstrip("/") + ctx.exchange.path

    def begin_attempt(
        self, ctx: RequestContext, backend: BackendConfig, strip_usage: bool
    ) -> Attempt:
        """A continuation's attempt (see :mod:`quantroute.proxy.continuation`)."""
        return self._begin(ctx, backend, strip_usage, continuation=True)

    def _begin(
        self,
        ctx: RequestContext,
        backend: BackendConfig,
        strip_usage: bool,
        *,
        continuation: bool = False,
    ) -> Attempt:
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
        attempt = Attempt(backend, lease, strip_usage, ctx.group, self.telemetry)
        number = len(ctx.attempts) + 1
        attempt.trail = ctx.trail.attempt(number, backend, continuation=continuation)
        ctx.attempts.append(attempt)
        return attempt

    def _give_up(
        self,
        ctx: RequestContext,
        attempt: Attempt,
        reason: str,
        *,
        last: bool,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        ctx.failures.append(f"{attempt.backend_id}: {reason}")
        attempt.give_up(reason, status=status, error=error, retry=not last)

    async def _try(
        self, ctx: RequestContext, attempt: Attempt, body: bytes, *, last: bool
    ) -> Response | None:
        """The response for the client, or None when the next backend should be tried."""
        url = attempt.backend.url.rstrip("/") + ctx.exchange.path
        # the gateway's own credentials for this backend, + traceparent when tracing
        headers = attempt.trail.headers(ctx.upstream_headers(attempt.backend_id))
        handed_over = False
        try:
            if ctx.features.stream:
                response = await race_disconnect(
                    ctx.receive, self.upstream.post(url, body, headers)
                )
                if response.status >= 500 and not last:
                    response.close()
                    status = response.status
                    self._give_up(ctx, attempt, f"HTTP {status}", last=last, status=status)
                    return None
                if response.status < 400:
                    handed_over = True  # the relay owns the response and the attempt from here
                    return relay_stream(ctx, attempt, response)
                # an error answer to a stream request is a JSON body, not a stream: whole
                status, ctype, data = await race_disconnect(ctx.receive, _read(response))
            else:
                exchange = self._exchange(url, body, headers)
                status, ctype, data = await race_disconnect(ctx.receive, exchange)
            if status >= 500 and not last:
                self._give_up(ctx, attempt, f"HTTP {status}", last=last, status=status)
                return None
            reply = relay_body(ctx, attempt, status, ctype, data)
            await ctx.exchange.completed(status)
            return reply
        except UpstreamConnectError as exc:
            self._give_up(ctx, attempt, str(exc), last=last, error="upstream_connect_error")
            return None
        except ClientDisconnected:
            attempt.finish(CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        finally:
            if not handed_over:
                attempt.release()

    async def _exchange(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, str, bytes]:
        return await _read(await self.upstream.post(url, body, headers))


async def _read(response: UpstreamResponse) -> tuple[int, str, bytes]:
    """Status, content type and the whole body; the response is closed if reading fails."""
    try:
        return response.status, response.content_type, await response.read()
    except BaseException:
        response.close()
        raise
