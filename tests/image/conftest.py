"""Session fixtures for the image tier: build the images with scripts/build-image, pick how to run
them (a container where one starts, else a chroot), and report what was measured.

Everything here is marked ``image``; ``-m "not image"`` deselects it before any fixture runs.
When this machine cannot build or run the image (no engine, no tools, no base reachable), the
tier is skipped with the reason and the summary says so in capitals; QUANTROUTE_IMAGE_REQUIRED=1
turns that skip into a failure. A build that runs and fails is always a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

from quantroute.testing.fake_backend import FakeBackend, FakeState, ThreadedServer

from .images import (
    BuildFailed,
    Image,
    ImageTierUnavailable,
    build,
    checkout_tag,
    inspect,
    pick_engine,
)
from .runners import Runner, choose_runner

HERE = Path(__file__).parent
TEST_TIMEOUT_S = 240  # per test body; the builds have their own bound (images.BUILD_TIMEOUT_S)
SERVED_MODEL = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"  # deploy/docker/gateway.yaml


@dataclass
class TierReport:
    skipped_because: str | None = None
    facts: dict[str, str] = field(default_factory=dict)


REPORT_KEY = pytest.StashKey[TierReport]()


@dataclass(frozen=True)
class Tier:
    engine: str
    gateway: Image
    runner: Runner
    work: Path
    report: TierReport


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = TierReport()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: mark before `-m` deselection runs.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.image)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, func_only=True))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is None or (not report.facts and report.skipped_because is None):
        return
    terminalreporter.section("image tier")
    if report.skipped_because is not None:
        for line in ("IMAGE TIER SKIPPED: " + report.skipped_because).splitlines():
            terminalreporter.write_line(line, red=True, bold=True)
    for what, value in report.facts.items():
        terminalreporter.write_line(f"{what}: {value}")


def _unavailable(report: TierReport, exc: ImageTierUnavailable) -> NoReturn:
    report.skipped_because = str(exc)
    if os.environ.get("QUANTROUTE_IMAGE_REQUIRED") == "1":
        pytest.fail(f"QUANTROUTE_IMAGE_REQUIRED=1 and the image tier cannot run: {exc}")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tier(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tier:
    report = request.config.stash[REPORT_KEY]
    if report.skipped_because is not None:
        _unavailable(report, ImageTierUnavailable(report.skipped_because))
    work = tmp_path_factory.mktemp("image")
    try:
        engine = pick_engine()
        name, seconds = build(engine, "gateway", checkout_tag(), work / "build.log")
        gateway = inspect(engine, name)
        runner, notes = choose_runner(engine, gateway, work)
    except ImageTierUnavailable as exc:
        _unavailable(report, exc)
    except BuildFailed as exc:
        pytest.fail(str(exc))
    report.facts["engine"] = engine
    report.facts["gateway image"] = f"{name} on {gateway.base}, built in {seconds:.0f} s"
    report.facts["runs as"] = runner.description
    for note in notes:
        report.facts.setdefault("not used", note)
    return Tier(engine, gateway, runner, work, report)


@pytest.fixture(scope="session")
def profiler_image(tier: Tier) -> Image:
    try:
        name, seconds = build(tier.engine, "profiler", checkout_tag(), tier.work / "build.log")
    except BuildFailed as exc:
        pytest.fail(str(exc))
    image = inspect(tier.engine, name)
    tier.report.facts["profiler image"] = f"{name}, built in {seconds:.0f} s"
    return image


@pytest.fixture
def backend() -> Iterator[tuple[ThreadedServer, FakeState]]:
    """A fake vLLM on the host's loopback, serving the example config's model."""
    state = FakeState(served_model_name=SERVED_MODEL)
    with ThreadedServer(FakeBackend(state).app) as server:
        yield server, state
