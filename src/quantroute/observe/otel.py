"""The OpenTelemetry SDK side: a tracer provider exporting OTLP/HTTP, spans, W3C propagation.

Imported only when tracing is on (``quantroute[tracing]``). The provider is the app's own, never
installed as the process-global one, so two gateways (or a test's in-memory exporter) never share
state. Propagation uses the global text-map propagator, which follows OTEL_PROPAGATORS
(default ``tracecontext,baggage``: the W3C ``traceparent`` header that vLLM continues).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import get_global_textmap
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context

from quantroute import __version__
from quantroute.observe.settings import TracingSettings

INSTRUMENTATION = "quantroute"
_KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}


def build_provider(settings: TracingSettings) -> TracerProvider:
    """A provider with a batch processor in front of the OTLP/HTTP exporter. A ratio in the
    config becomes ``ParentBased(TraceIdRatioBased(ratio))``; without one the SDK picks the
    sampler from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG."""
    sampler: Sampler | None = None
    if settings.sample_ratio is not None:
        sampler = ParentBased(TraceIdRatioBased(settings.sample_ratio))
    resource = Resource.create({SERVICE_NAME: settings.service_name, SERVICE_VERSION: __version__})
    provider = TracerProvider(sampler=sampler, resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    return provider


class OtelTracing:
    """The handful of span operations the request trail needs, on one tracer provider."""

    def __init__(self, provider: TracerProvider, *, owned: bool = False) -> None:
        self.provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer(INSTRUMENTATION, __version__)
        self._propagator = get_global_textmap()

    @classmethod
    def from_settings(cls, settings: TracingSettings) -> OtelTracing:
        return cls(build_provider(settings), owned=True)

    def server_span(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]
    ) -> Span:
        """The request's span, continuing the caller's trace when it sent a ``traceparent``."""
        parent = self._propagator.extract(headers)
        return self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    def child(
        self,
        parent: Span,
        name: str,
        kind: str = "internal",
        attributes: Mapping[str, Any] | None = None,
    ) -> Span:
        return self._tracer.start_span(
            name, context=set_span_in_context(parent), kind=_KINDS[kind], attributes=attributes
        )

    def inject(self, span: Span, carrier: dict[str, str]) -> None:
        """Add ``traceparent`` (and ``tracestate``) naming ``span`` as the parent."""
        self._propagator.inject(carrier, context=set_span_in_context(span))

    @staticmethod
    def fail(span: Span, description: str) -> None:
        span.set_status(Status(StatusCode.ERROR, description))

    @staticmethod
    def ids(span: Span) -> tuple[str, str] | None:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    def shutdown(self) -> None:
        """Flush what is batched and stop the exporter (only a provider built here)."""
        if self._owned:
            self.provider.shutdown()
