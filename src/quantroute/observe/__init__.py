"""What one request did, for people: a structured access log and OpenTelemetry traces.

- :mod:`.record`: the per-request record (features, decision, attempts, status, tokens, timings),
  the one value both outputs are made from; also the future decision log for replay-tuning.
- :mod:`.trail`: the per-request object the request path reports to, handed out by
  :mod:`.observer` (``Observer.begin``); a shared no-op when nothing is configured, so the hot
  path pays nothing.
- :mod:`.access_log`: JSON lines through a writer thread, to a rotated file or stdout.
- :mod:`.settings`: config + ``OTEL_*`` environment -> whether and how to trace (no SDK import).
- :mod:`.otel`: the OpenTelemetry SDK side (provider, exporter, spans, W3C propagation); imported
  only when tracing is on, so the ``tracing`` extra stays optional.
"""
