"""One policy, end to end: fresh fleet, its gateway, the replay, and everything measured.

The fleet and the gateway each run in their own process (``fleet_proc`` and ``quantroute
serve``); the replay client and a monitor (polling the gateway's ``/admin/backends``) run here.
After the replay the backends' own ``/metrics`` are read (preemptions, token counters, their
TTFT histograms) before the fleet is stopped and writes its lag figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families

from routingbench import policies, procs
from routingbench.policies import PolicySpec
from routingbench.replay import Outcome, replay
from routingbench.workload import TraceRequest

START_TIMEOUT_S = 180.0
BACKEND_SERIES = (
    "vllm:num_preemptions_total",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:time_to_first_token_seconds_count",
    "vllm:request_queue_time_seconds_sum",
    "vllm:request_success_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
)


@dataclass
class Sample:
    """What the gateway saw of one backend at one moment (wall seconds from replay start)."""

    at: float
    backend: str
    kv: float | None
    running: float | None
    waiting: float | None
    in_flight: int


@dataclass
class PolicyRun:
    spec: PolicySpec
    time_scale: float
    outcomes: list[Outcome]
    wall_s: float
    backend_metrics: dict[str, dict[str, float]]
    fleet_lag: dict[str, dict[str, float]]
    samples: list[Sample] = field(default_factory=list)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The gateway's /admin/backends ``decisions`` per backend at the end."""
    cpu_s: dict[str, float | None] = field(default_factory=dict)
    """CPU seconds the fleet and the gateway processes used."""
    gateway_metrics: dict[str, float] = field(default_factory=dict)
    """The gateway's own counters at the end (``GATEWAY_SERIES``, summed over backends)."""


@dataclass(frozen=True)
class RunSettings:
    time_scale: float
    quality_floor: float
    matrix_path: Path | None
    work_dir: Path
    fleet_seed: int = 0
    task_header: bool = False
    monitor: bool = True
    kv_blocks: Mapping[str, int] = field(default_factory=dict)
    """KV blocks per backend id (vLLM's --num-gpu-blocks-override), for tests that need pressure."""
    fleet_file: Path | None = None
    """A simulated fleet YAML instead of the packaged default (its backends are the gateway's
    when the policy names none)."""


GATEWAY_SERIES = (
    "quantroute_prefix_prompt_tokens_total",
    "quantroute_prefix_expected_hit_tokens_total",
    "quantroute_prefix_affinity_withdrawn_total",
)


def backend_series(text: str, names: tuple[str, ...] = BACKEND_SERIES) -> dict[str, float]:
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


async def _monitor(url: str, period_s: float, out: list[Sample], t0: float) -> None:
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                rows = (await client.get(url + "/admin/backends")).json()["backends"]
                now = time.monotonic() - t0
                for r in rows:
                    m = r["metrics"] or {}
                    out.append(
                        Sample(
                            now,
                            r["id"],
                            m.get("kv_cache_usage_perc"),
                            m.get("num_requests_running"),
                            m.get("num_requests_waiting"),
                            r["in_flight"]["requests"],
                        )
                    )
            await asyncio.sleep(period_s)


async def _replay_and_watch(
    url: str, spec: PolicySpec, rows: list[TraceRequest], s: RunSettings
) -> tuple[list[Outcome], float, list[Sample]]:
    samples: list[Sample] = []
    watcher = None
    if s.monitor:
        period = policies.SCRAPE_INTERVAL_S / s.time_scale
        watcher = asyncio.create_task(_monitor(url, period, samples, time.monotonic()))
    timeout = (policies.TOTAL_S + 60.0) / s.time_scale
    try:
        outcomes, wall = await replay(
            url,
            rows,
            spec.model_for,
            time_scale=s.time_scale,
            timeout_s=timeout,
            task_header=s.task_header,
            session_header=spec.session_header,
        )
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return outcomes, wall, samples


def run_policy(
    spec: PolicySpec, answer_key: Path, rows: list[TraceRequest], s: RunSettings
) -> PolicyRun:
    stats = s.work_dir / f"{spec.key}.fleet.json"
    cmd = procs.fleet_command(
        s.time_scale, s.fleet_seed, answer_key, stats, s.kv_blocks, s.fleet_file
    )
    fleet = procs.start(f"{spec.key}.fleet", cmd, s.work_dir, stdout_pipe=True)
    with procs.running(fleet):
        urls: dict[str, str] = procs.read_json_line(fleet, START_TIMEOUT_S)["urls"]
        port = procs.free_port()
        config = policies.gateway_config(
            spec,
            urls,
            port=port,
            time_scale=s.time_scale,
            quality_floor=s.quality_floor,
            matrix_path=s.matrix_path,
        )
        policies.validated(config)
        config_path = s.work_dir / f"{spec.key}.gateway.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        gateway_cmd = [*procs.quantroute_command(), "serve", "--config", str(config_path)]
        gateway_cmd += ["--log-level", "warning"]
        gateway = procs.start(f"{spec.key}.gateway", gateway_cmd, s.work_dir)
        url = f"http://127.0.0.1:{port}"
        with procs.running(gateway):
            procs.wait_fresh(gateway, url, len(urls), 30.0)
            outcomes, wall, samples = uvloop.run(_replay_and_watch(url, spec, rows, s))
            admin = httpx.get(url + "/admin/backends", timeout=5.0).json()["backends"]
            own = backend_series(httpx.get(url + "/metrics", timeout=5.0).text, GATEWAY_SERIES)
            cpu = {"gateway": procs.cpu_seconds(gateway)}
        cpu["fleet"] = procs.cpu_seconds(fleet)
        metrics = {
            b: backend_series(httpx.get(u + "/metrics", timeout=5.0).text) for b, u in urls.items()
        }
    lag = json.loads(stats.read_text()) if stats.exists() else {}
    decisions = {r["id"]: r["decisions"] for r in admin}
    return PolicyRun(spec, s.time_scale, outcomes, wall, metrics, lag, samples, decisions, cpu, own)
