"""Packaging: every third-party import is declared where it is used (the gateway's own
dependencies, or the extra of the command that needs it), and without the extras the CLI still
works and says how to get them. The lean install itself is built and checked in tests/image/."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "quantroute"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Modules (paths under src/quantroute) whose imports may come from an extra, besides the core
# dependencies; each is imported only by a command or a setting that needs the extra.
EXTRA_OF = {
    "profiler/": "profiler",
    "demo/": "demo",
    "tune/plot.py": "profiler",  # quantroute tune --plot
    "apis/conversations_redis.py": "redis",  # conversations.redis_url
    "access/counters.py": "redis",  # RedisCounters, built only with access.quotas.redis_url
    "access/quotas.py": "redis",  # RedisError, imported only with access.quotas.redis_url
    "observe/otel.py": "tracing",  # imported once tracing is configured on
    "observe/trail.py": "tracing",  # the SDK's Span type, for type checking only
    "testing/otlp_receiver.py": "dev",  # the tests' OTLP receiver: opentelemetry-proto
    "testing/anthropic_replies.py": "dev",  # reading the tests' anthropic client's replies
}
EXTRA_MODULES = ("openai", "httpx2", "matplotlib")


def _names(specs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def _third_party_imports(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return {r for r in roots if r not in sys.stdlib_module_names and r != "quantroute"}


def test_every_import_is_declared_in_the_dependencies_or_the_extra_that_uses_it() -> None:
    core = _names(PROJECT["dependencies"])
    extras = {name: _names(specs) for name, specs in PROJECT["optional-dependencies"].items()}
    distributions = packages_distributions()
    undeclared = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        extra = next((e for prefix, e in EXTRA_OF.items() if where.startswith(prefix)), "")
        allowed = core | extras.get(extra, set())
        for module in sorted(_third_party_imports(path)):
            dists = {canonicalize_name(d) for d in distributions.get(module, [module])}
            if not dists & allowed:
                undeclared.append(f"{path.relative_to(ROOT)}: {module} ({', '.join(dists)})")
    assert not undeclared, "imported but not declared where used:\n" + "\n".join(undeclared)
    assert not _names(PROJECT["dependencies"]) & {"openai", "matplotlib", "httpx2"}


def test_dev_extra_pulls_every_other_extra_and_respx_is_gone() -> None:
    dev = PROJECT["optional-dependencies"]["dev"]
    (self_ref,) = [Requirement(s) for s in dev if Requirement(s).name == "quantroute"]
    assert self_ref.extras == set(PROJECT["optional-dependencies"]) - {"dev"}
    assert "respx" not in _names(dev)


# A Python that cannot import the extras' packages, as after `pip install quantroute`.
HIDE_EXTRAS = f"""
import sys
class HideExtras:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRA_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, HideExtras())
"""


def _cli(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    code = HIDE_EXTRAS + "from quantroute.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_cli_help_and_gateway_commands_work_without_the_extras() -> None:
    helped = _cli("--help")
    assert helped.returncode == 0, helped.stderr
    assert "profile" in helped.stdout and "matrix" in helped.stdout
    assert _cli("profile", "--help").returncode == 0
    assert _cli("matrix", "plot", "--help").returncode == 0
    assert _cli("check-config", "config/gateway.yaml").returncode == 0
    matrix = PACKAGE / "demo" / "capability_matrix.json"
    shown = _cli("matrix", "show", str(matrix))
    assert shown.returncode == 0 and "llama3-8b-awq" in shown.stdout, shown.stderr


@pytest.mark.parametrize(
    ("argv", "extra", "missing"),
    [
        (("matrix", "plot", "m.json", "-o", "m.png"), "profiler", "matplotlib"),
        (("profile", "--config", "config/gateway.yaml"), "profiler", "openai and httpx2"),
        (("demo", "--traffic", "--port", "1"), "demo", "openai"),
    ],
)
def test_a_command_without_its_extra_says_how_to_install_it(
    argv: tuple[str, ...], extra: str, missing: str
) -> None:
    result = _cli(*argv)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"needs {missing}, which" in result.stderr
    assert f"pip install 'quantroute[{extra}]'" in result.stderr


def test_the_gateway_and_the_profiler_package_import_without_the_extras() -> None:
    code = HIDE_EXTRAS + (
        "import quantroute.serve, quantroute.server.app, quantroute.profiler\n"
        "assert quantroute.profiler.ProfileSettings\n"
        "try:\n"
        "    quantroute.profiler.ProfileSession\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('needs', exc.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "needs"
    assert result.stdout.split()[1] in EXTRA_MODULES


def test_an_installed_but_broken_extra_is_not_reported_as_missing() -> None:
    """The hint is for a missing package; a broken one raises its own error."""
    code = (
        "import sys\n"
        "class Broken:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib':\n"
        "            raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "from quantroute.extras import require\n"
        "require('profiler', 'matrix plot', 'matplotlib')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert (
        "No module named 'numpy'" in result.stderr and "quantroute[profiler]" not in result.stderr
    )
