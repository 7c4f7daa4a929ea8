"""CPU per request of the gateway's tracing and access-log code alone, in one process.

    python benchmarks/overhead/trail_cost.py [--requests 20000] [--rounds 5]

The full overhead benchmark (``run.py --tracing 0.01 1``) measures tracing inside the whole
gateway, where on a shared 2-core machine its signal sits under ±10-20% of run-to-run noise.
This isolates it: one request's worth of trail calls (begin, parse and decide phases with the
decision event, one attempt with its traceparent header, first byte, end, finish) repeated N
times per mode, modes interleaved over rounds, CPU time of this process (the batch exporter's
thread included: each mode ends with a flush), medians over rounds. Spans go over OTLP/HTTP to
a counting receiver in a child process (its CPU is not counted), as in production.

Modes: off (the shared no-op trail), access log only (to /dev/null), tracing at 1% and 100%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantroute.config import AccessLogConfig, BackendConfig
from quantroute.core.model import Decision, LatencyClass, Outcome, RequestFeatures, Scores
from quantroute.observe.access_log import AccessLog
from quantroute.observe.observer import Observer
from quantroute.observe.otel import OtelTracing
from quantroute.observe.settings import TracingSettings
from quantroute.testing.procs import free_port

BACKEND = BackendConfig(
    id="fake-0", url="http://127.0.0.1:8101", served_model_name="m", max_seq_len=8192, capacity=8
)
FEATURES = RequestFeatures("auto", 12, 16, task="chat", latency_class=LatencyClass.INTERACTIVE)
DECISION = Decision(
    Outcome.ROUTED,
    "fake-0",
    ("fake-0", "fake-1"),
    {"fake-0": Scores(0.91, {"headroom": 0.99, "latency": 0.8, "cost": 1.0}),
     "fake-1": Scores(0.90, {"headroom": 0.98, "latency": 0.8, "cost": 1.0})},
    {},
    group="auto",
)  # fmt: skip
HEADERS = {"content-type": "application/json", "authorization": "Bearer x"}
FORWARD = {"Content-Type": "application/json", "Authorization": "Bearer x"}


def one_request(observer: Observer) -> None:
    """What the request path calls on the trail for one routed, non-streamed request."""
    trail = observer.begin("POST", "/v1/chat/completions", "chat", HEADERS)
    with trail.phase("parse"):
        trail.parsed(FEATURES)
    with trail.phase("decide"):
        trail.decided(DECISION)
    attempt = trail.attempt(1, BACKEND)
    attempt.headers(FORWARD)
    attempt.first_byte()
    attempt.end(200)
    trail.finish(200, prompt_tokens=12, completion_tokens=16, answered=attempt)


def _observer(mode: str, endpoint: str) -> tuple[Observer, Callable[[], None]]:
    if mode == "off":
        observer = Observer()
    elif mode == "access log":
        observer = Observer(access_log=AccessLog(AccessLogConfig(path="/dev/null", max_bytes=0)))
    else:
        ratio = {"tracing 1%": 0.01, "tracing 100%": 1.0}[mode]
        tracing = OtelTracing.from_settings(TracingSettings(endpoint, mode, ratio))
        observer = Observer(tracing=tracing)
    observer.start()

    def flush() -> None:
        if observer.tracing is not None:
            observer.tracing.provider.force_flush()
        observer.stop()
        if observer.tracing is not None:
            observer.tracing.provider.shutdown()

    return observer, flush


def measure(mode: str, endpoint: str, requests: int) -> float:
    """CPU µs per request (this process, all threads), flush included."""
    observer, flush = _observer(mode, endpoint)
    for _ in range(200):  # warm-up
        one_request(observer)
    started = time.process_time()
    for _ in range(requests):
        one_request(observer)
    flush()
    return (time.process_time() - started) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--output", type=Path, default=None, help="write results as JSON here")
    a = p.parse_args(argv)
    # Room for every span of a round: the default queue (2,048) drops spans a tight loop makes
    # faster than one exporter thread sends them, which would hide the export's cost.
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(6 * (a.requests + 200)))
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", "quantroute.testing.otlp_receiver", "--count-only", "--port",
         str(port)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        receiver.stdout.readline()  # READY
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        modes = ["off", "access log", "tracing 1%", "tracing 100%"]
        samples: dict[str, list[float]] = {m: [] for m in modes}
        for rnd in range(a.rounds):
            for mode in modes[rnd % len(modes) :] + modes[: rnd % len(modes)]:
                samples[mode].append(measure(mode, endpoint, a.requests))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
            spans = json.loads(r.read())["spans"]
    finally:
        receiver.terminate()
        receiver.wait(10)
    result: dict[str, Any] = {
        "requests_per_round": a.requests,
        "rounds": a.rounds,
        "median_us": {m: statistics.median(v) for m, v in samples.items()},
        "samples_us": samples,
        "spans_received": spans,
        "spans_expected_at_100pct": 4 * (a.requests + 200) * a.rounds,
    }
    off = result["median_us"]["off"]
    print("| mode | CPU µs per request (median of rounds) | added over off |")
    print("|---|--:|--:|")
    for mode, us in result["median_us"].items():
        print(f"| {mode} | {us:.2f} ({min(samples[mode]):.2f}–{max(samples[mode]):.2f}) | "
              f"+{us - off:.2f} |")  # fmt: skip
    print(
        f"\nspans received: {spans}; at 100% expected {result['spans_expected_at_100pct']:,} "
        "(4 per request: server, parse, decide, one attempt; warm-up included)"
    )
    if a.output:
        a.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
