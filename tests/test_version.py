"""Which quantroute is running: ``quantroute --version`` and the ``quantroute_build_info`` metric."""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib.metadata import version

import httpx
import pytest

from quantroute import __version__
from quantroute.config import parse_config
from quantroute.testing.gateway_thread import GatewayThread


def test_version_flag_prints_the_installed_package_version() -> None:
    executable = shutil.which("quantroute")
    if executable is None:
        pytest.fail("the quantroute entry point is not installed: pip install -e .")
    result = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"quantroute {version('quantroute')}\n"
    assert __version__ == version("quantroute")


def test_gateway_exports_build_info() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with GatewayThread(parse_config({})) as gateway:
        text = httpx.get(gateway.url + "/metrics").text
    samples = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "quantroute_build_info"
    ]
    assert [(s.labels, s.value) for s in samples] == [
        ({"version": __version__, "python_version": platform.python_version()}, 1.0)
    ]
