"""The per-request trail: the one object the request path reports to.

``Observer.begin`` returns :data:`NO_TRAIL`, a shared object whose methods do nothing, when
neither tracing nor the access log is configured, so the hot path pays a few empty calls and no
allocation. A request the sampler drops (and no access log) gets a :class:`PropagatingTrail`:
nothing recorded, only the trace context passed on. Otherwise a :class:`RecordingTrail` fills a
:class:`RequestRecord` and, with tracing, keeps the request's spans:

    POST /v1/chat/completions        SERVER  (continues an incoming traceparent)
    ├── quantroute.parse             INTERNAL
    ├── quantroute.decide            INTERNAL  event quantroute.decision (top scores, rejections)
    ├── quantroute.queue             INTERNAL  only when flow control holds the request
    ├── quantroute.upstream #1       CLIENT    HTTP 500, event retry
    ├── quantroute.upstream #2       CLIENT    event first_byte; its context goes to the backend
    │                                          (``traceparent``), so vLLM's span is its child;
    │                                          a stream that broke: event continuation
    └── quantroute.upstream #3       CLIENT    quantroute.continuation=true

Nothing here reads prompt text, message contents or headers other than the trace context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from quantroute.config import BackendConfig
from quantroute.core.model import Decision, RequestFeatures
from quantroute.observe.record import AttemptRecord, RequestRecord, top_scores

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from quantroute.observe.access_log import AccessLog
    from quantroute.observe.otel import OtelTracing

CLIENT_CLOSED = 499
Clock = Callable[[], float]


class Attempt:
    """One upstream try, as the request path reports it. This base does nothing."""

    __slots__ = ()

    def headers(self, base: Mapping[str, str]) -> Mapping[str, str]:
        """The headers for the backend: ``base``, plus the trace context (``traceparent``)
        naming this attempt when tracing is on (then as a new mapping; ``base`` is shared)."""
        return base

    def first_byte(self) -> None:
        """The backend's first response bytes arrived."""

    def end(self, status: int | None, *, error: str | None = None, then: str | None = None) -> None:
        """The try is over: the backend's status (None if none came), why it failed, and what
        the request does next (``"retry"`` before the first byte, ``"continuation"`` after a
        stream broke), recorded as an event of that name."""


class Trail:
    """One request, as the request path reports it. This base does nothing (see NO_TRAIL)."""

    __slots__ = ()

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        return _NO_PHASE

    def parsed(self, features: RequestFeatures) -> None: ...

    def decided(self, decision: Decision) -> None: ...

    def attempt(
        self, number: int, backend: BackendConfig, *, continuation: bool = False
    ) -> Attempt:
        """The ``number``-th try (1-based); ``continuation``: it continues a broken stream."""
        return NO_ATTEMPT

    def finish(
        self,
        status: int,
        *,
        error: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        answered: Attempt | None = None,
    ) -> None:
        """The request is over: its status, and ``answered``, the attempt whose answer the
        client got (None when the gateway itself answered with an error)."""


NO_TRAIL = Trail()
NO_ATTEMPT = Attempt()
_NO_PHASE = contextlib.nullcontext()


class RecordingAttempt(Attempt):
    __slots__ = ("_span", "_trail", "record")

    def __init__(self, trail: RecordingTrail, record: AttemptRecord, span: Span | None) -> None:
        self._trail = trail
        self.record = record
        self._span = span

    def headers(self, base: Mapping[str, str]) -> Mapping[str, str]:
        if self._span is None or self._trail.tracing is None:
            return base
        carrier = dict(base)
        self._trail.tracing.inject(self._span, carrier)
        return carrier

    def first_byte(self) -> None:
        rec = self.record
        if rec.first_byte is not None:
            return
        rec.first_byte = self._trail.clock()
        if self._trail.recording and self._span is not None:
            ttfb_ms = round((rec.first_byte - rec.started) * 1000.0, 3)
            self._span.add_event("first_byte", {"quantroute.ttfb_ms": ttfb_ms})

    def end(self, status: int | None, *, error: str | None = None, then: str | None = None) -> None:
        rec = self.record
        if rec.ended is not None:
            return
        rec.ended, rec.status, rec.error = self._trail.clock(), status, error
        span = self._span
        if span is None:
            return
        if self._trail.recording:
            attributes: dict[str, Any] = {}
            if status is not None:
                attributes["http.response.status_code"] = status
            failed = error is not None or (status is not None and status >= 500)
            if failed:
                attributes["error.type"] = error or str(status)
                assert self._trail.tracing is not None
                self._trail.tracing.fail(span, error or f"HTTP {status}")
            span.set_attributes(attributes)
            if then is not None:
                span.add_event(then, {"quantroute.reason": error or f"HTTP {status}"})
        span.end()


class _Propagating(Attempt):
    """An unsampled request's attempt: only the trace context goes on (sampled flag off), so
    the backend's parent-based sampler drops its span too."""

    __slots__ = ("_span", "_tracing")

    def __init__(self, tracing: OtelTracing, span: Span) -> None:
        self._tracing = tracing
        self._span = span

    def headers(self, base: Mapping[str, str]) -> Mapping[str, str]:
        carrier = dict(base)
        self._tracing.inject(self._span, carrier)
        return carrier


class PropagatingTrail(Trail):
    """An unsampled request with no access log: nothing is recorded, the trace context is
    passed on. Costs one non-recording span and one header per attempt."""

    __slots__ = ("_attempt",)

    def __init__(self, tracing: OtelTracing, span: Span) -> None:
        self._attempt = _Propagating(tracing, span)

    def attempt(
        self, number: int, backend: BackendConfig, *, continuation: bool = False
    ) -> Attempt:
        return self._attempt


class RecordingTrail(Trail):
    __slots__ = ("_done", "_log", "_phase_span", "_span", "clock", "record", "recording", "tracing")

    def __init__(
        self,
        record: RequestRecord,
        clock: Clock,
        tracing: OtelTracing | None,
        span: Span | None,
        log: AccessLog | None,
    ) -> None:
        self.record = record
        self.clock = clock
        self.tracing = tracing
        self._span = span
        self.recording = span is not None and span.is_recording()
        self._phase_span: Span | None = None
        self._log = log
        self._done = False

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = self.clock()
        span = None
        if self.recording and self.tracing is not None and self._span is not None:
            span = self.tracing.child(self._span, f"quantroute.{name}")
        self._phase_span = span
        try:
            yield
        except BaseException as exc:
            if span is not None:
                span.set_attribute("error.type", _error_type(exc))
            raise
        finally:
            elapsed = self.clock() - started
            if name == "parse":
                self.record.parse_s = elapsed
            elif name == "decide":
                self.record.decide_s = elapsed
            elif name == "queue":
                self.record.queue_s = elapsed
            self._phase_span = None
            if span is not None:
                span.end()

    def parsed(self, features: RequestFeatures) -> None:
        self.record.features = features
        if self.recording and self._span is not None:
            self._span.set_attributes(_feature_attributes(features))

    def decided(self, decision: Decision) -> None:
        self.record.decision = decision
        if not self.recording or self._span is None:
            return
        if decision.group is not None:
            self._span.set_attribute("quantroute.group", decision.group)
        self._span.set_attribute("quantroute.outcome", decision.outcome.value)
        target = self._phase_span or self._span
        target.add_event("quantroute.decision", _decision_attributes(decision))

    def attempt(
        self, number: int, backend: BackendConfig, *, continuation: bool = False
    ) -> Attempt:
        rec = AttemptRecord(number, backend.id, backend.variant_id, self.clock(), continuation)
        self.record.attempts.append(rec)
        span = None
        if self.tracing is not None and self._span is not None:
            attributes: dict[str, Any] = {}
            if self.recording:
                attributes = {
                    "quantroute.attempt": number,
                    "quantroute.backend": backend.id,
                    "quantroute.variant": backend.variant_id,
                    "http.request.method": "POST",
                    **_server_address(backend.url),
                }
                if continuation:
                    attributes["quantroute.continuation"] = True
            span = self.tracing.child(self._span, "quantroute.upstream", "client", attributes)
        return RecordingAttempt(self, rec, span)

    def finish(
        self,
        status: int,
        *,
        error: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        answered: Attempt | None = None,
    ) -> None:
        if self._done:
            return
        self._done = True
        rec = self.record
        rec.ended, rec.status, rec.error = self.clock(), status, error
        if isinstance(answered, RecordingAttempt):
            rec.answered = answered.record
        rec.prompt_tokens, rec.completion_tokens = prompt_tokens, completion_tokens
        if self._span is not None:
            if self.recording:
                self._finish_span(self._span, rec)
            self._span.end()
        if self._log is not None:
            self._log.write(rec)

    def _finish_span(self, span: Span, rec: RequestRecord) -> None:
        assert rec.status is not None and self.tracing is not None
        attributes: dict[str, Any] = {"http.response.status_code": rec.status}
        if rec.attempts:
            attributes["quantroute.attempts"] = len(rec.attempts)
        last = rec.answered
        if last is not None:
            attributes["quantroute.backend"] = last.backend
            attributes["quantroute.variant"] = last.variant
            if last.first_byte is not None:
                ttfb_ms = round((last.first_byte - rec.started) * 1000.0, 3)
                attributes["quantroute.first_byte_ms"] = ttfb_ms
        if rec.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = rec.prompt_tokens
        if rec.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = rec.completion_tokens
        if rec.error is not None:
            attributes["error.type"] = rec.error
        span.set_attributes(attributes)  # one call: the SDK takes its lock per call
        if rec.status == CLIENT_CLOSED:
            self.tracing.fail(span, "client disconnected")
        elif rec.status >= 500:
            self.tracing.fail(span, rec.error or f"HTTP {rec.status}")


def _server_address(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    address: dict[str, Any] = {"server.address": parts.hostname or ""}
    if parts.port is not None:
        address["server.port"] = parts.port
    return address


def _error_type(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else type(exc).__name__


def _feature_attributes(f: RequestFeatures) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.request.model": f.model,
        "quantroute.task_type": f.task,
        "quantroute.latency_class": f.latency_class.value,
        "quantroute.stream": f.stream,
        "quantroute.prompt_tokens_estimate": f.prompt_tokens,
    }
    if f.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = f.max_tokens
    return attributes


def _decision_attributes(d: Decision) -> dict[str, Any]:
    best = top_scores(d)
    attributes: dict[str, Any] = {
        "quantroute.outcome": d.outcome.value,
        "quantroute.candidates": len(d.scores),
        "quantroute.top.backends": [b for b, _ in best],
        "quantroute.top.scores": [s for _, s in best],
        "quantroute.rejected.backends": list(d.rejected),
        "quantroute.rejected.reasons": ["; ".join(map(str, r)) for r in d.rejected.values()],
    }
    if d.chosen is not None:
        attributes["quantroute.chosen"] = d.chosen
    if d.relaxed:
        attributes["quantroute.relaxed_filters"] = list(d.relaxed)
    if d.kv_pressure:
        attributes["quantroute.kv_pressure"] = list(d.kv_pressure)
    return attributes
