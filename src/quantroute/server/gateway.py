"""The gateway's request path: parse once, decide, forward with retries, relay, account.

Ownership rule: whoever opens an upstream response closes it, in ``finally``. A client that
disconnects before the first byte cancels the upstream request; one that disconnects mid-stream
cancels the relay, whose ``finally`` closes the upstream connection, so vLLM aborts the request.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from quantroute.config import BackendConfig, GatewayConfig
from quantroute.core.filters import request_kv_tokens
from quantroute.core.model import Decision, Outcome, RequestFeatures
from quantroute.core.scheduler import Policy, decide
from quantroute.errors import (
    ClientDisconnected,
    ContextLengthExceeded,
    ModelNotFound,
    NoBackendAvailable,
    UpstreamConnectError,
    UpstreamUnavailable,
    openai_error_body,
)
from quantroute.proxy.relay import SSEUsageTap, Usage, usage_from_body
from quantroute.proxy.upstream import Upstream, UpstreamResponse
from quantroute.server.disconnect import RelayResponse, race_disconnect
from quantroute.server.parse import Kind, ParsedRequest, parse_request, upstream_body
from quantroute.state.matrix_source import MatrixSource
from quantroute.state.store import StateStore, Ticket
from quantroute.telemetry import Telemetry

log = logging.getLogger("quantroute.decisions")
CLIENT_CLOSED = 499
_PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}


def _sse_error(message: str) -> bytes:
    """The error event vLLM itself sends when a stream fails after it started."""
    body = openai_error_body(message, "upstream_error", code=502)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class _Attempt:
    backend: BackendConfig
    ticket: Ticket
    strip_usage: bool
    started: float


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore,
        upstream: Upstream,
        matrix: MatrixSource,
        telemetry: Telemetry,
    ) -> None:
        self.config = config
        self.store = store
        self.upstream = upstream
        self.matrix = matrix
        self.telemetry = telemetry
        self.policy = Policy(config.policy, config.groups)
        self._sequence = itertools.count()
        self._backends = {b.id: b for b in config.backends}

    def set_backends(self, backends: list[BackendConfig]) -> None:
        self.store.set_backends(backends)
        self._backends = {b.id: b for b in backends}

    # -- deciding ------------------------------------------------------------------------------
    def parse(self, kind: Kind, raw: bytes, request: Request) -> ParsedRequest:
        headers = {
            k: request.headers[k]
            for k in ("x-quantroute-task", "x-quantroute-priority")
            if k in request.headers
        }
        return parse_request(kind, raw, headers, self.config.policy, next(self._sequence))

    def decide(self, features: RequestFeatures) -> Decision:
        started = time.perf_counter()
        decision = decide(features, self.store.snapshot(), self.matrix.current, self.policy)
        elapsed = time.perf_counter() - started
        t = self.telemetry
        t.route_duration.labels(decision.chosen or "none").observe(elapsed)
        for backend_id, reasons in decision.rejected.items():
            for reason in reasons:
                t.rejections.labels(backend_id, reason.filter).inc()
                self.store.note_steered_away(backend_id, reason.filter)
        for backend_id in decision.kv_pressure:
            t.cache_pressure.labels(backend_id).inc()
        if log.isEnabledFor(logging.DEBUG) or self.config.log_decisions:
            log.info("decision task=%s %s", features.task, decision.explain())
        return decision

    def routed_or_raise(self, features: RequestFeatures) -> Decision:
        decision = self.decide(features)
        if decision.outcome is Outcome.ROUTED:
            return decision
        if decision.outcome is Outcome.UNKNOWN_MODEL:
            raise ModelNotFound(
                f"The model '{features.model}' does not exist: not a group and no backend serves it.",
                param="model",
            )
        if decision.outcome is Outcome.TOO_LONG:
            raise ContextLengthExceeded(
                f"This request needs about {features.prompt_tokens} prompt tokens plus "
                f"max_tokens={features.max_tokens}, more than any backend of "
                f"'{features.model}' accepts.",
                param="messages",
            )
        self.telemetry.no_backend.labels(decision.group or features.model).inc()
        self.telemetry.requests.labels("none", decision.group or features.model, "503").inc()
        raise NoBackendAvailable(
            f"No backend can take this request now for '{features.model}'.",
            reasons={k: tuple(map(str, v)) for k, v in decision.rejected.items()},
            retry_after_s=self.config.policy.retry_after_s,
        )

    # -- forwarding ----------------------------------------------------------------------------
    async def handle(self, kind: Kind, request: Request) -> Response:
        parsed = self.parse(kind, await request.body(), request)
        decision = self.routed_or_raise(parsed.features)
        return await self.forward(parsed, decision, request)

    async def forward(
        self, parsed: ParsedRequest, decision: Decision, request: Request
    ) -> Response:
        headers = {"Content-Type": "application/json"}
        if "authorization" in request.headers:
            headers["Authorization"] = request.headers["authorization"]
        kv_tokens = request_kv_tokens(parsed.features, self.config.policy)
        candidates = [b for b in decision.ranked if b in self._backends]
        attempts = candidates[: 1 + self.config.policy.retries]
        group = decision.group or parsed.features.model
        errors: list[str] = []
        for number, backend_id in enumerate(attempts):
            backend = self._backends[backend_id]
            body, strip = upstream_body(parsed, backend.served_model_name)
            ticket = self.store.begin(backend_id, kv_tokens, parsed.features.prompt_tokens)
            attempt = _Attempt(backend, ticket, strip, time.perf_counter())
            last = number == len(attempts) - 1
            self.telemetry.in_flight.inc()
            self.telemetry.backend_in_flight.labels(backend_id).inc()
            handed_over = False
            try:
                url = backend.url.rstrip("/") + _PATHS[parsed.kind]
                if parsed.features.stream:
                    response = await race_disconnect(
                        request.receive, self.upstream.post(url, body, headers)
                    )
                    if response.status >= 500 and not last:
                        response.close()
                        errors.append(f"{backend_id}: HTTP {response.status}")
                        self.telemetry.retries.labels(backend_id).inc()
                        continue
                    handed_over = True
                    return self._stream(response, attempt, group, decision)
                status, ctype, data = await race_disconnect(
                    request.receive, self._exchange(url, body, headers)
                )
                if status >= 500 and not last:
                    errors.append(f"{backend_id}: HTTP {status}")
                    self.telemetry.retries.labels(backend_id).inc()
                    continue
                elapsed = time.perf_counter() - attempt.started
                self.telemetry.ttfb.labels(backend_id).observe(elapsed)
                self._account(
                    attempt, group, status, usage_from_body(data) if status == 200 else None
                )
                return Response(
                    data, status, headers=self._headers(backend_id, decision), media_type=ctype
                )
            except UpstreamConnectError as exc:
                errors.append(f"{backend_id}: {exc}")
                self.telemetry.retries.labels(backend_id).inc()
            except ClientDisconnected:
                self._account(attempt, group, CLIENT_CLOSED, None)
                return Response(status_code=CLIENT_CLOSED)
            finally:
                if not handed_over:
                    self._release(attempt)
        raise UpstreamUnavailable("Could not reach a backend: " + "; ".join(errors))

    async def _exchange(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        response = await self.upstream.post(url, body, headers)
        try:
            return response.status, response.content_type, await response.read()
        except BaseException:
            response.close()
            raise

    def _stream(
        self, response: UpstreamResponse, attempt: _Attempt, group: str, decision: Decision
    ) -> Response:
        tap = SSEUsageTap(attempt.strip_usage)
        status = response.status
        relay = self._relay(response, attempt, tap, group, status)
        return RelayResponse(
            relay,
            status,
            headers=self._headers(attempt.backend.id, decision),
            media_type=response.content_type,
        )

    async def _relay(
        self,
        response: UpstreamResponse,
        attempt: _Attempt,
        tap: SSEUsageTap,
        group: str,
        status: int,
    ) -> AsyncIterator[bytes]:
        outcome = CLIENT_CLOSED
        first = True
        try:
            async for chunk in response.chunks():
                if first:
                    self.telemetry.ttfb.labels(attempt.backend.id).observe(
                        time.perf_counter() - attempt.started
                    )
                    self.store.first_byte(attempt.ticket)
                    first = False
                out = tap.feed(chunk)
                if out:
                    yield out
            rest = tap.flush()
            if rest:
                yield rest
            outcome = status
        except UpstreamConnectError as exc:
            outcome = 502
            log.warning("upstream %s failed mid-stream: %s", attempt.backend.id, exc)
            yield _sse_error(f"upstream {attempt.backend.id} failed mid-stream: {exc}")
        finally:
            if outcome == CLIENT_CLOSED:
                response.close()
            self._account(attempt, group, outcome, tap.finish() if outcome == 200 else None)
            self._release(attempt)

    def _headers(self, backend_id: str, decision: Decision) -> dict[str, str]:
        return {
            "x-quantroute-backend": backend_id,
            "x-quantroute-decision": decision.explain()[:1024],
        }

    def _account(self, attempt: _Attempt, group: str, status: int, usage: Usage | None) -> None:
        backend_id = attempt.backend.id
        self.telemetry.requests.labels(backend_id, group, str(status)).inc()
        if usage is not None:
            self.telemetry.prompt_tokens.labels(backend_id, group).inc(usage.prompt_tokens)
            self.telemetry.completion_tokens.labels(backend_id, group).inc(usage.completion_tokens)

    def _release(self, attempt: _Attempt) -> None:
        self.store.end(attempt.ticket)
        self.telemetry.in_flight.dec()
        self.telemetry.backend_in_flight.labels(attempt.backend.id).dec()


ResponseFactory = Callable[[Request], Awaitable[Response]]
