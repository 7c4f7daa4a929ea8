"""Per app: hands each request its trail (see :mod:`quantroute.observe.trail`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from quantroute.observe.record import RequestRecord
from quantroute.observe.trail import NO_TRAIL, Clock, PropagatingTrail, RecordingTrail, Trail

if TYPE_CHECKING:
    from quantroute.observe.access_log import AccessLog
    from quantroute.observe.otel import OtelTracing
    from quantroute.observe.settings import TracingSettings


class Observer:
    """Per app: builds each request's trail. ``start()``/``stop()`` run in the app's lifespan:
    they build (from settings) and shut down the tracer provider and run the access-log thread.
    An injected ``tracing`` (tests) is used as is and not shut down here."""

    def __init__(
        self,
        *,
        tracing: OtelTracing | None = None,
        settings: TracingSettings | None = None,
        access_log: AccessLog | None = None,
        clock: Clock = time.perf_counter,
        wall: Clock = time.time,
    ) -> None:
        self.tracing = tracing
        self._settings = settings
        self.access_log = access_log
        self._clock = clock
        self._wall = wall
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def start(self) -> None:
        if self.tracing is None and self._settings is not None:
            from quantroute.observe.otel import OtelTracing

            self.tracing = OtelTracing.from_settings(self._settings)
        if self.access_log is not None:
            self.access_log.start()
        self._active = self.tracing is not None or self.access_log is not None

    def stop(self) -> None:
        self._active = False
        if self.access_log is not None:
            self.access_log.stop()
        if self.tracing is not None:
            self.tracing.shutdown()

    def begin(
        self,
        method: str,
        path: str,
        kind: str,
        headers: Mapping[str, str],
        *,
        request_id: str = "",
        key: str | None = None,
    ) -> Trail:
        """A request's trail. ``headers`` are read for the trace context only; ``request_id``
        is the access middleware's (the client's ``x-request-id``); ``key`` the caller's key
        NAME (None without keys), never the key."""
        if not self._active:
            return NO_TRAIL
        started, wall = self._clock(), self._wall()
        span = None
        if self.tracing is not None:
            attributes = {"http.request.method": method, "url.path": path, "http.route": path}
            if request_id:
                attributes["quantroute.request_id"] = request_id
            if key is not None:
                attributes["quantroute.key"] = key
            span = self.tracing.server_span(f"{method} {path}", headers, attributes)
            if self.access_log is None and not span.is_recording():
                return PropagatingTrail(self.tracing, span)
        record = RequestRecord(path, kind, wall, started, request_id=request_id or None, key=key)
        if span is not None and self.tracing is not None:
            ids = self.tracing.ids(span)
            if ids is not None:
                record.trace_id, record.span_id = ids
        return RecordingTrail(record, self._clock, self.tracing, span, self.access_log)
