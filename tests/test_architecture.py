"""The layering the README promises, enforced: the routing core is pure, the profiler stands apart.

* ``core/`` imports nothing that does I/O, runs an event loop, reads a clock or speaks HTTP, and
  of quantroute only ``base``, ``config``, ``errors`` and ``core`` itself (checked on the source,
  lazy imports included, and on what a fresh interpreter loads; ``config`` brings the model of
  its ``access`` section, ``access.config``, and ``extras``, its check that an optional
  dependency is installed, with it: neither does I/O).
* The profiler never imports the gateway server (``quantroute.server``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import quantroute

PACKAGE = Path(quantroute.__file__).resolve().parent
NO_IO = {
    "asyncio", "time", "datetime", "socket", "ssl", "select", "selectors", "http", "urllib",
    "httpx", "aiohttp", "requests", "fastapi", "starlette", "uvicorn", "prometheus_client",
    "os", "io", "pathlib", "shutil", "subprocess", "threading", "multiprocessing", "random",
    "logging", "yaml", "json",
}  # fmt: skip
CORE_MAY_USE = ("quantroute.base", "quantroute.config", "quantroute.errors", "quantroute.core")
CONFIG_BRINGS = (
    "quantroute.access",
    "quantroute.access.config",
    "quantroute.extras",
    "quantroute.flow",
    "quantroute.flow.settings",
    "quantroute.resilience",
    "quantroute.resilience.settings",
)
"""What ``quantroute.config`` imports beyond base and errors: its ``access``, ``flow`` and
``resilience`` sections' models (and those packages, docstrings only) and the check that an optional extra is
installed."""


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_imports_nothing_that_does_io(path: Path) -> None:
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in NO_IO, f"{path.name} imports {name}"
        if top == "quantroute":
            assert name.startswith(CORE_MAY_USE), f"{path.name} imports {name}"


def test_core_loads_no_io_library_into_a_fresh_interpreter() -> None:
    code = (
        "import sys, quantroute.core.scheduler, quantroute.core.features, quantroute.core.plugins\n"
        "print('\\n'.join(sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    heavy = {"asyncio", "aiohttp", "httpx", "fastapi", "starlette", "uvicorn", "prometheus_client"}
    assert not [m for m in loaded if m.split(".")[0] in heavy]
    ours = [m for m in loaded if m.startswith("quantroute.")]
    assert [m for m in ours if not m.startswith(CORE_MAY_USE) and m not in CONFIG_BRINGS] == []


@pytest.mark.parametrize("path", modules("profiler"), ids=lambda p: p.name)
def test_profiler_does_not_import_the_server(path: Path) -> None:
    assert not [m for m in imports(path) if m.startswith("quantroute.server")]


def test_profiler_loads_without_the_server() -> None:
    names = [f"quantroute.profiler.{p.stem}" for p in modules("profiler") if p.stem != "__init__"]
    code = f"import sys\nfor m in {names!r}: __import__(m)\nprint('\\n'.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert "quantroute.profiler.command" in loaded
    assert not [m for m in loaded if m.startswith(("quantroute.server", "quantroute.serve"))]
