"""Quota accuracy: offered load at twice a key's limit for one window, through real gateway
processes; how many requests and tokens were admitted, against the limit.

    python benchmarks/access/accuracy.py            # 60 s windows, ~4 minutes
    python benchmarks/access/accuracy.py --window 10 --quick

Scenarios (each its own fresh keys and window):
  1. one gateway, quotas in its memory;
  2. two gateways sharing one real redis-server (Debian's package), requests alternating;
  3. two gateways each counting in memory (what Redis fixes: up to twice the limit).

Two keys per scenario: one limited on requests per minute, one on tokens per minute (each
request asks max_tokens=100; the fake backend answers with exactly that many completion tokens
and 10 prompt tokens, so a request costs 110 tokens, of which ~6 are estimated at admission and
the rest charged when the response ends). Writes RESULTS.md and results.json beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer
from quantroute.testing.procs import free_port, quantroute_command, start, stop
from quantroute.testing.redis_server import RedisServer

HERE = Path(__file__).resolve().parent
RPM_LIMIT = 600
TPM_LIMIT = 30_000
MAX_TOKENS = 100
COST = 10 + MAX_TOKENS


@dataclass
class Outcome:
    scenario: str
    key: str
    limit: int
    unit: str
    offered_requests: int = 0
    admitted_requests: int = 0
    refused: int = 0
    errors: int = 0
    admitted_tokens: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    redis_fallbacks: int = 0
    """Times a gateway of the scenario logged that it fell back to local counting."""

    @property
    def p50_ms(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[len(ordered) // 2] if ordered else math.nan

    @property
    def admitted(self) -> int:
        return self.admitted_requests if self.unit == "requests" else self.admitted_tokens

    @property
    def ratio(self) -> float:
        return self.admitted / self.limit


def _key(scenario: str, unit: str) -> str:
    return f"qr-accuracy-{scenario}-{unit}-0123456789abcdef"


def gateway_config(
    port: int, backend_url: str, scenario: str, window_s: int, redis_url: str | None
) -> dict[str, Any]:
    def row(unit: str, limits: dict[str, int]) -> dict[str, Any]:
        digest = hashlib.sha256(_key(scenario, unit).encode()).hexdigest()
        return {"name": f"{scenario}-{unit}", "sha256": digest, "models": ["*"], "limits": limits}

    quotas: dict[str, Any] = {"window_s": window_s}
    if redis_url:
        quotas["redis_url"] = redis_url
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "backends": [
            {
                "id": "fake",
                "url": backend_url,
                "served_model_name": "fake",
                "max_seq_len": 8192,
                "capacity": 512,
            }
        ],
        "groups": [{"name": "auto", "variants": ["fake"]}],
        "policy": {"scrape_interval_s": 1.0},
        "access": {
            "keys": [
                row("requests", {"requests_per_minute": RPM_LIMIT}),
                row("tokens", {"tokens_per_minute": TPM_LIMIT}),
            ],
            "quotas": quotas,
        },
    }


async def drive(
    session: aiohttp.ClientSession, urls: list[str], key: str, rate: float, window_s: float,
    outcome: Outcome,
) -> None:  # fmt: skip
    """Open loop: one request every 1/rate seconds for window_s, alternating gateways."""
    body = json.dumps(
        {
            "model": "auto",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": MAX_TOKENS,
        }
    ).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: list[asyncio.Task[None]] = []
    n = math.floor(rate * window_s)

    async def one(url: str) -> None:
        t0 = loop.time()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
                status = response.status
            outcome.latencies_ms.append(1000 * (loop.time() - t0))
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome.errors += 1
            outcome.statuses[type(exc).__name__] = outcome.statuses.get(type(exc).__name__, 0) + 1
            return
        outcome.statuses[str(status)] = outcome.statuses.get(str(status), 0) + 1
        if status == 200:
            outcome.admitted_requests += 1
            outcome.admitted_tokens += json.loads(data)["usage"]["total_tokens"]
        elif status == 429:
            outcome.refused += 1
        else:
            outcome.errors += 1

    for i in range(n):
        await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
        outcome.offered_requests += 1
        tasks.append(asyncio.create_task(one(urls[i % len(urls)] + "/v1/chat/completions")))
    await asyncio.gather(*tasks)


async def run_scenario(name: str, urls: list[str], window_s: int) -> list[Outcome]:
    rpm = Outcome(name, f"{name}-requests", RPM_LIMIT, "requests")
    tpm = Outcome(name, f"{name}-tokens", TPM_LIMIT, "tokens")
    # twice the limit over one window
    rpm_rate = 2 * RPM_LIMIT / window_s
    tpm_rate = 2 * TPM_LIMIT / COST / window_s
    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(
            drive(session, urls, _key(name, "requests"), rpm_rate, window_s, rpm),
            drive(session, urls, _key(name, "tokens"), tpm_rate, window_s, tpm),
        )
    return [rpm, tpm]


def start_gateways(
    workdir: Path, backend_url: str, scenario: str, count: int, window_s: int,
    redis_url: str | None,
) -> list[tuple[Any, str]]:  # fmt: skip
    gateways = []
    for i in range(count):
        port = free_port()
        config = workdir / f"{scenario}-{i}.yaml"
        config.write_text(
            yaml.safe_dump(gateway_config(port, backend_url, scenario, window_s, redis_url))
        )
        cmd = [*quantroute_command(), "serve", "--config", str(config), "--log-level", "warning"]
        child = start(f"{scenario}-{i}", cmd, workdir)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or child.popen.poll() is not None:
                raise RuntimeError(f"gateway {scenario}-{i} did not start:\n{child.tail()}")
            time.sleep(0.1)
        gateways.append((child, url))
    return gateways


def report(outcomes: list[Outcome], window_s: int, started: str) -> str:
    title = {"one-memory": "one gateway, memory", "two-redis": "two gateways, one Redis",
             "two-memory": "two gateways, memory each (no Redis)"}  # fmt: skip
    lines = [
        "# Quota accuracy",
        "",
        f"Run {started}: offered load at 2× each key's limit for one {window_s} s window "
        f"(requests per minute {RPM_LIMIT}, tokens per minute {TPM_LIMIT:,}; a request costs "
        f"{COST} tokens). `python benchmarks/access/accuracy.py`.",
        "",
        "| scenario | limited on | offered requests | admitted requests | admitted tokens "
        "| admitted / limit | 429 | errors | p50 latency | Redis fallbacks |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for o in outcomes:
        lines.append(
            f"| {title[o.scenario]} | {o.unit} per minute ({o.limit:,}) | {o.offered_requests:,} "
            f"| {o.admitted_requests:,} | {o.admitted_tokens:,} | **{o.ratio:.3f}** "
            f"| {o.refused:,} | {o.errors} | {o.p50_ms:.0f} ms | "
            f"{o.redis_fallbacks if o.scenario == 'two-redis' else '–'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--window", type=int, default=60, help="quota window and run length, seconds")
    p.add_argument("--output-dir", type=Path, default=HERE)
    a = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="qr-accuracy-"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    outcomes: list[Outcome] = []
    backend = FakeBackend(FakeState(served_model_name="fake"))
    with ThreadedServer(backend.app) as server, RedisServer(workdir) as redis:
        plans = [("one-memory", 1, None), ("two-redis", 2, redis.url), ("two-memory", 2, None)]
        for name, count, redis_url in plans:
            gateways = start_gateways(workdir, server.url, name, count, a.window, redis_url)
            try:
                print(f"# {name}: {count} gateway(s), {a.window} s", flush=True)
                result = asyncio.run(run_scenario(name, [u for _, u in gateways], a.window))
            finally:
                for child, _ in gateways:
                    stop(child)
            fallbacks = sum(
                child.log_path.read_text().count("quota store unreachable") for child, _ in gateways
            )
            for o in result:
                o.redis_fallbacks = fallbacks
            for o in result:
                print(f"  {o.key}: admitted {o.admitted:,} / {o.limit:,} = {o.ratio:.3f} "
                      f"(429: {o.refused}, errors: {o.errors}, {o.statuses})", flush=True)  # fmt: skip
            outcomes += result
    text = report(outcomes, a.window, started)
    a.output_dir.mkdir(parents=True, exist_ok=True)
    (a.output_dir / "RESULTS.md").write_text(text)
    rows = [{**asdict(o), "latencies_ms": None, "p50_ms": o.p50_ms} for o in outcomes]
    data = {"window_s": a.window, "started": started, "outcomes": rows}
    (a.output_dir / "results.json").write_text(json.dumps(data, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
