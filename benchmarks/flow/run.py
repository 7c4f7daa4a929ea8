"""Flow control under a burst: the same load against the same saturated fleet, with and without
the gateway-side queue, in one run (issue #15).

Two fake vLLM backends (``quantroute.testing.fake_backend``) report a KV-cache usage that follows
what they are serving: ``active / slots`` (capped at 0.99), so each is saturated (at the 0.95
hard ceiling) with ``slots`` streams in flight and frees room as they end. ``--clients``
concurrent streaming clients loop for ``--seconds``: send a request, read the stream to its end;
on 503/429 they retry at once (the retry storm a burst becomes), on anything else they count it.
The gateway runs as ``quantroute serve`` in its own process, once with ``on_saturation: reject``
(the behaviour before flow control) and once with ``queue``.

    python benchmarks/flow/run.py                      # 400 clients, 10 s per mode
    python benchmarks/flow/run.py --clients 1000 --seconds 30

Prints a Markdown table: answers, 503/429s, attempts per answer, answers' time-to-first-byte
percentiles (including the time queued), and the queue's own counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer

ROOT = Path(__file__).resolve().parents[2]
BODY = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
    "stream": True,
}
BODY_MAX_TOKENS = 16


@dataclass
class Tally:
    answers: int = 0
    refused: int = 0
    other: int = 0
    ttfb_s: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    """What the "other" outcomes were (status or exception), for the report."""


def follow_load(states: list[FakeState], slots: int, stop: threading.Event) -> None:
    """What each backend reports tracks what it serves (a fake KV cache filling and freeing)."""
    while not stop.wait(0.01):
        for s in states:
            s.kv_usage = min(0.99, s.active / slots)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config(urls: list[str], mode: str, max_wait_s: float) -> dict[str, object]:
    backends = [
        {"id": f"b{i}", "url": url, "served_model_name": "fake-model", "max_seq_len": 8192,
         "capacity": 256}
        for i, url in enumerate(urls)
    ]  # fmt: skip
    return {
        "backends": backends,
        "groups": [{"name": "auto", "variants": [b["id"] for b in backends]}],
        "policy": {
            "scrape_interval_s": 0.05,
            "flow_control": {"on_saturation": mode, "max_wait_s": max_wait_s},
        },
        "access": {"open": True},
    }


async def client(session: aiohttp.ClientSession, url: str, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            async with session.post(url, json=BODY) as response:
                if response.status in (429, 503):
                    await response.read()
                    tally.refused += 1
                    continue
                first = None
                async for _ in response.content.iter_any():
                    first = first or time.monotonic()
                if response.status == 200 and first is not None:
                    tally.answers += 1
                    tally.ttfb_s.append(first - started)
                else:
                    tally.other += 1
                    tally.kinds[str(response.status)] += 1
        except (TimeoutError, aiohttp.ClientError) as exc:
            tally.other += 1
            tally.kinds[type(exc).__name__] += 1


async def load(url: str, clients: int, seconds: float) -> Tally:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + seconds
        target = url + "/v1/chat/completions"
        await asyncio.gather(*(client(session, target, deadline, tally) for _ in range(clients)))
    return tally


def metric(url: str, name: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics").text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


@contextlib.contextmanager
def gateway(cfg: dict[str, object]):  # type: ignore[no-untyped-def]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "quantroute.cli", "serve", "--config", str(path)]
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), "--log-level", os.environ.get("FLOW_BENCH_LOG", "error")],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            for _ in range(200):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/ready", timeout=1).status_code == 200:
                        break
                time.sleep(0.05)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def serve_backends(slots: int, chunk_delay: float) -> None:
    """The ``--backends`` child: two fake backends, their URLs on stdout, until stdin closes."""
    # A KV cache as big as `slots` of these requests (the gateway's estimate of one: ~10 prompt
    # tokens + max_tokens), so its own in-flight account agrees with what the backend reports.
    blocks = math.ceil(slots * (10 + BODY_MAX_TOKENS) / 16)
    states = [
        FakeState(kv_usage=0.0, chunk_delay_s=chunk_delay, num_gpu_blocks=blocks) for _ in range(2)
    ]
    servers = [ThreadedServer(FakeBackend(s).app).start() for s in states]
    stop = threading.Event()
    follower = threading.Thread(target=follow_load, args=(states, slots, stop), daemon=True)
    follower.start()
    print(" ".join(s.url for s in servers), flush=True)
    sys.stdin.read()
    stop.set()
    follower.join(5)
    for server in servers:
        server.stop()


@contextlib.contextmanager
def backends(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    cmd = [sys.executable, __file__, "--backends", "--slots", str(args.slots)]
    child = subprocess.Popen(
        [*cmd, "--chunk-delay", str(args.chunk_delay)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().split()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def run(mode: str, args: argparse.Namespace) -> dict[str, object]:
    with backends(args) as urls, gateway(config(urls, mode, args.max_wait)) as url:
        tally = asyncio.run(load(url, args.clients, args.seconds))
        flow = {
            "queue_timeouts": metric(url, "quantroute_flow_rejected_total"),
            "dispatched_from_queue": metric(url, "quantroute_flow_queue_wait_seconds_count"),
        }
    q = statistics.quantiles(tally.ttfb_s, n=100) if len(tally.ttfb_s) > 1 else [0.0] * 99
    return {
        "mode": mode,
        "answers": tally.answers,
        "refused": tally.refused,
        "other": tally.other,
        "attempts_per_answer": (tally.answers + tally.refused) / max(1, tally.answers),
        "ttfb_p50_ms": q[49] * 1000,
        "ttfb_p99_ms": q[98] * 1000,
        "kinds": dict(tally.kinds),
        **flow,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=16, help="streams a backend holds when full")
    parser.add_argument("--chunk-delay", type=float, default=0.02, help="s per streamed token")
    parser.add_argument("--max-wait", type=float, default=30.0, help="flow_control.max_wait_s")
    parser.add_argument("--backends", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backends:
        serve_backends(args.slots, args.chunk_delay)
        return
    rows = [run(mode, args) for mode in ("reject", "queue")]
    print(
        f"{args.clients} streaming clients, {args.seconds:g} s per mode, 2 backends saturated at "
        f"{args.slots} streams each, {args.chunk_delay * 1000:g} ms per token x 16 tokens\n"
    )
    print("| on_saturation | answers | 503/429 | other | attempts per answer | TTFB p50 | TTFB p99 "
          "| queue timeouts/full | waits observed |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['answers']} | {r['refused']} | {r['other']} "
            f"| {r['attempts_per_answer']:.2f} | {r['ttfb_p50_ms']:.0f} ms "
            f"| {r['ttfb_p99_ms']:.0f} ms | {r['queue_timeouts']:.0f} "
            f"| {r['dispatched_from_queue']:.0f} |"
        )
    for r in rows:
        if r["kinds"]:
            print(f"\n{r['mode']}: other outcomes {r['kinds']}")


if __name__ == "__main__":
    main()
