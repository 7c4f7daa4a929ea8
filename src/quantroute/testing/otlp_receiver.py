"""A small OTLP/HTTP trace receiver on loopback, for tests and the overhead benchmark.

``POST /v1/traces`` with an ``application/x-protobuf`` body (gzip or not), decoded with the
official ``opentelemetry-proto`` package (a dev dependency) into :class:`ReceivedSpan` values;
answers with an empty ``ExportTraceServiceResponse`` as a collector does. ``count_only`` keeps
no spans, only counts them per service (the benchmark's sink); ``GET /stats`` returns the counts.

    python -m quantroute.testing.otlp_receiver --port 4318 [--count-only]

prints ``READY <url>`` and serves until interrupted. For looking at traces by eye, run Arize
Phoenix or an OpenTelemetry Collector instead (see the README).
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from quantroute.testing.fake_backend import ThreadedServer

PROTOBUF = "application/x-protobuf"
_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS = {0: "unset", 1: "ok", 2: "error"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    status: str
    status_message: str
    attributes: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    start_ns: int
    end_ns: int


@dataclass
class Received:
    requests: int = 0
    bytes: int = 0
    spans: list[ReceivedSpan] = field(default_factory=list)
    per_service: dict[str, int] = field(default_factory=dict)


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return None if which is None else getattr(v, which)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _parse(body: bytes) -> Any:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def count(body: bytes) -> dict[str, int]:
    """Spans per ``service.name`` in an ``ExportTraceServiceRequest``."""
    counts: dict[str, int] = {}
    for rs in _parse(body).resource_spans:
        service = str(_attributes(rs.resource.attributes).get("service.name", ""))
        counts[service] = counts.get(service, 0) + sum(len(ss.spans) for ss in rs.scope_spans)
    return counts


def decode(body: bytes) -> list[ReceivedSpan]:
    """An ``ExportTraceServiceRequest`` -> its spans, ids as lowercase hex."""
    request = _parse(body)
    spans = []
    for rs in request.resource_spans:
        service = str(_attributes(rs.resource.attributes).get("service.name", ""))
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append(
                    ReceivedSpan(
                        service=service,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=_KINDS.get(s.kind, str(s.kind)),
                        status=_STATUS.get(s.status.code, str(s.status.code)),
                        status_message=s.status.message,
                        attributes=_attributes(s.attributes),
                        events=tuple((e.name, _attributes(e.attributes)) for e in s.events),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return spans


def _empty_response() -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    return bytes(ExportTraceServiceResponse().SerializeToString())


class OtlpReceiver:
    """Start with ``start()`` (or as a context manager); ``url`` is the traces endpoint."""

    def __init__(self, *, count_only: bool = False, port: int | None = None) -> None:
        self.count_only = count_only
        self.received = Received()
        self._lock = threading.Lock()
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_get("/stats", self._stats)
        self._server = ThreadedServer(app, port)
        self.url = f"{self._server.url}/v1/traces"
        self._response = _empty_response()

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        counts = count(body)
        spans = [] if self.count_only else decode(body)
        with self._lock:
            got = self.received
            got.requests += 1
            got.bytes += len(body)
            got.spans.extend(spans)
            for service, n in counts.items():
                got.per_service[service] = got.per_service.get(service, 0) + n
        return web.Response(body=self._response, content_type=PROTOBUF)

    async def _stats(self, _: web.Request) -> web.Response:
        with self._lock:
            got = self.received
            stats = {"requests": got.requests, "bytes": got.bytes, "spans": got.per_service}
        return web.json_response(stats)

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.received.spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 15.0
    ) -> list[ReceivedSpan]:
        """Poll until ``predicate(spans)`` holds (bounded); return the spans either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="OTLP/HTTP trace receiver on 127.0.0.1")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--count-only", action="store_true", help="count spans, keep none")
    args = p.parse_args(argv)
    receiver = OtlpReceiver(count_only=args.count_only, port=args.port).start()
    print(f"READY {receiver.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print(f"received {receiver.received.requests} requests, {receiver.received.bytes} bytes")
        receiver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
