"""The system under test: fake backends (core 0) and ``quantroute serve`` (core 1), on loopback.

The gateway gets two identical backends in the group ``auto`` and a capability matrix for their
variant, so every request runs the full routing decision: group lookup, the health, context,
KV-ceiling, KV-pressure and quality filters, the headroom, latency and cost scorers, the picker.

With ``tracing`` ratios, more gateways of the same code run with OpenTelemetry tracing on at those
sampling ratios, exporting over OTLP/HTTP to a counting receiver on core 0 (``trace-1%``...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

import baselines
import procs
from loadgen import BENCH_KEY, Target

MODEL = "fake-model"
VARIANT = "fake-8b-awq"
GROUP = "auto"
BACKEND_CPU = 0
GATEWAY_CPU = 1
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class GatewayProc:
    proc: procs.Proc
    target: Target
    cmd: list[str]
    pythonpath: str | None
    baseline: bool = False
    """A ceiling baseline (``bare``, ``nginx``, ``vllm-router``: :mod:`baselines`), not quantroute."""


@dataclass(frozen=True)
class Fleet:
    backend: procs.Proc
    direct: Target
    gateways: tuple[GatewayProc, ...]
    """The gateway under test first; optionally a candidate (a patched copy), then the tracing
    gateways; then the baselines (the bare proxy, nginx and the Rust router if installed)."""
    config_path: Path
    backend_cmd: list[str]
    receiver_url: str | None = None

    @property
    def routed(self) -> Target:
        return self.gateways[0].target

    @property
    def targets(self) -> list[Target]:
        return [self.direct, *(g.target for g in self.gateways)]

    @property
    def quantroutes(self) -> tuple[GatewayProc, ...]:
        return tuple(g for g in self.gateways if not g.baseline)

    def gateway_pid(self, target: str) -> int:
        """The gateway process serving ``target`` (the first gateway for ``direct``)."""
        found = [g for g in self.gateways if g.target.name == target]
        return (found or [self.gateways[0]])[0].proc.pid


def matrix() -> dict[str, object]:
    task = {"quality": 0.8, "samples": 32, "passed": 26}
    profile = {
        "served_model_name": MODEL,
        "gpu": "L40S",
        "gpu_cost_per_hour": 1.0,
        "ttft_ms": {"p50": 40.0, "p95": 90.0, "n": 64},
        "itl_ms": {"p50": 12.0, "p95": 20.0, "n": 64},
        "cost_per_1m_output_tokens": 0.35,
        "tasks": {t: task for t in ("coding", "reasoning", "extraction", "chat")},
    }
    return {
        "schema_version": 1,
        "generated_at": "2025-01-01T00:00:00Z",
        "variants": {VARIANT: profile},
    }


def gateway_config(port: int, backend_ports: list[int], matrix_file: str) -> dict[str, object]:
    backends = [
        {
            "id": f"fake-{i}",
            "url": f"http://127.0.0.1:{p}",
            "served_model_name": MODEL,
            "variant": VARIANT,
            "quantization": "awq",
            "max_seq_len": 8192,
            "capacity": 2048,  # the 1,000-open-streams phase stays admitted
            "gpu": "L40S",
            "gpu_cost_per_hour": 1.0,
        }
        for i, p in enumerate(backend_ports)
    ]
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "matrix_path": matrix_file,
        "backends": backends,
        "groups": [{"name": GROUP, "variants": [VARIANT], "quality_floor": 0.5}],
        "policy": {"scrape_interval_s": 1.0},
    }


def access_section() -> dict[str, object]:
    """Keys and quotas on, every request counted (requests, tokens, a concurrency lease), with
    limits no load here reaches: what is measured is the cost of checking, not of refusing."""
    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    limits = {
        "requests_per_minute": 10**9,
        "tokens_per_minute": 10**12,
        "concurrent_requests": 10**6,
    }
    return {"keys": [{"name": "bench", "sha256": digest, "models": ["*"], "limits": limits}]}


def write_files(
    workdir: Path, port: int, backend_ports: list[int], *, access: bool = False
) -> Path:
    (workdir / "matrix.json").write_text(json.dumps(matrix(), indent=2))
    data = gateway_config(port, backend_ports, "matrix.json")
    if access:
        data["access"] = access_section()
    config = workdir / ("gateway-access.yaml" if access else "gateway.yaml")
    config.write_text(yaml.safe_dump(data))
    return config


def tracing_name(ratio: float) -> str:
    return f"trace-{ratio * 100:g}%"


def write_tracing_config(config: Path, ratio: float, receiver_url: str) -> Path:
    """The gateway config with tracing on at ``ratio``, exporting to the receiver."""
    data = yaml.safe_load(config.read_text())
    name = tracing_name(ratio)
    data["tracing"] = {"endpoint": receiver_url, "sample_ratio": ratio, "service_name": name}
    data["matrix_path"] = str(config.parent / data["matrix_path"])
    out = config.parent / f"gateway-{name.rstrip('%')}pct.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def _start_receiver(stack: contextlib.ExitStack, workdir: Path, source: str | None) -> str:
    port = procs.free_port()
    cmd = [sys.executable, "-m", "quantroute.testing.otlp_receiver", "--count-only"]
    proc = procs.start("otlp-receiver", [*cmd, "--port", str(port)], BACKEND_CPU, workdir,
                       environment(source))  # fmt: skip
    stack.callback(procs.stop, proc)
    procs.wait_log(proc, "READY", START_TIMEOUT_S)
    return f"http://127.0.0.1:{port}/v1/traces"


def environment(pythonpath: str | None) -> dict[str, str]:
    """This process's environment, with ``pythonpath`` (a ``src`` directory) first if given."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return env


def start_gateway(
    stack: contextlib.ExitStack,
    workdir: Path,
    config: Path,
    name: str,
    pythonpath: str | None,
    env: dict[str, str] | None = None,
) -> GatewayProc:
    """A gateway on the gateway's core, ready; ``env`` defaults to :func:`environment`."""
    port = procs.free_port()
    cmd = [*procs.quantroute_command(), "serve", "--config", str(config), "--port", str(port)]
    cmd += ["--log-level", "warning"]
    env = environment(pythonpath) if env is None else env
    proc = procs.start(name, cmd, GATEWAY_CPU, workdir, env)
    stack.callback(procs.stop, proc)
    procs.wait_http(proc, f"http://127.0.0.1:{port}/ready", START_TIMEOUT_S)
    target = Target(name, f"http://127.0.0.1:{port}", GROUP)
    return GatewayProc(proc, target, cmd, pythonpath or env.get("PYTHONPATH"))


def start(
    stack: contextlib.ExitStack,
    workdir: Path,
    *,
    source: str | None = None,
    candidate: str | None = None,
    backends: int = 2,
    access: bool = False,
    tracing: tuple[float, ...] = (),
    nginx: bool = True,
    vllm_router: bool = True,
) -> Fleet:
    """Start backends, then the gateway, importing ``quantroute`` from ``source`` (a ``src``
    directory; default: as installed), a candidate gateway importing it from ``candidate``
    if given, and one gateway per ``tracing`` ratio (with the OTLP receiver they export to).
    Every process is stopped when ``stack`` closes."""
    ports = [procs.free_port() for _ in range(backends)]
    backend_cmd = [sys.executable, str(procs.HERE / "backend_proc.py"), "--model", MODEL]
    backend_cmd += ["--ports", *map(str, ports)]
    backend = procs.start("backends", backend_cmd, BACKEND_CPU, workdir, environment(source))
    stack.callback(procs.stop, backend)
    procs.wait_log(backend, "READY", START_TIMEOUT_S)
    config = write_files(workdir, procs.free_port(), ports)
    gateways = [start_gateway(stack, workdir, config, "gateway", source)]
    if candidate is not None:
        gateways.append(start_gateway(stack, workdir, config, "candidate", candidate))
    if access:  # the same gateway with API keys and quotas on, measured in the same run
        keyed = write_files(workdir, procs.free_port(), ports, access=True)
        gateways.append(start_gateway(stack, workdir, keyed, "access", source))
    receiver = _start_receiver(stack, workdir, source) if tracing else None
    for ratio in tracing:
        assert receiver is not None
        traced = write_tracing_config(config, ratio, receiver)
        gateways.append(start_gateway(stack, workdir, traced, tracing_name(ratio), source))
    for started in (
        baselines.start_bare(stack, workdir, GATEWAY_CPU, ports, MODEL, environment(source)),
        baselines.start_nginx(stack, workdir, GATEWAY_CPU, ports, MODEL) if nginx else None,
        (
            baselines.start_vllm_router(stack, workdir, GATEWAY_CPU, ports, MODEL)
            if vllm_router
            else None
        ),
    ):
        if started is not None:
            proc, target, cmd = started
            gateways.append(GatewayProc(proc, target, cmd, None, baseline=True))
    return Fleet(
        backend=backend,
        direct=Target("direct", f"http://127.0.0.1:{ports[0]}", MODEL),
        gateways=tuple(gateways),
        config_path=config,
        backend_cmd=backend_cmd,
        receiver_url=receiver,
    )
