"""The gateway image as built: its size, what the engine records, and what is inside it, checked
by running commands in it as its own user."""

from __future__ import annotations

import json
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import Tier
from .images import ROOT
from .runners import run_once

MAX_OWN_BYTES = 100_000_000  # the image's layers above its Python base
CONFIG = "/etc/quantroute/gateway.yaml"
PROFILER_HINT = "pip install 'quantroute[profiler]'"


def test_layers_above_the_python_base_are_at_most_100_mb(tier: Tier) -> None:
    image = tier.gateway
    assert image.base, "the image names its base (label org.opencontainers.image.base.name)"
    assert image.own_size is not None
    tier.report.facts["gateway image size"] = (
        f"{image.size / 1e6:.1f} MB, of which {image.own_size / 1e6:.1f} MB above the base"
    )
    assert image.own_size <= MAX_OWN_BYTES, f"{image.own_size / 1e6:.1f} MB above {image.base}"


def test_engine_records_user_port_healthcheck_and_the_serve_entrypoint(tier: Tier) -> None:
    image = tier.gateway
    assert image.user == "10001:10001"
    assert image.exposed_ports == ["8080/tcp"]
    assert image.healthcheck is not None, "HEALTHCHECK lost (podman needs --format docker)"
    assert image.healthcheck[0] == "CMD"
    assert "http://127.0.0.1:8080/health" in image.healthcheck[-1]
    assert image.entrypoint[:2] == ["/bin/sh", "-c"]
    assert image.entrypoint[2].startswith("exec quantroute serve --config")
    assert image.cmd == []
    assert image.env["QUANTROUTE_CONFIG"] == CONFIG


IDENTITY = """
import errno, json, os, quantroute
package = os.path.dirname(quantroute.__file__)
skip = {"/proc", "/sys", "/dev", "/tmp"}
writable = []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
    for path in [top, *(os.path.join(top, f) for f in files)]:
        if not os.path.islink(path) and os.access(path, os.W_OK):
            writable.append(path)
attempts = {}
for path in ["/tmp/probe", "/probe", "/etc/quantroute/probe", "/etc/quantroute/gateway.yaml",
             "/opt/quantroute/probe", os.path.join(package, "probe"),
             os.path.join(package, "__pycache__", "probe"), "/var/tmp/probe", "/run/lock/probe"]:
    try:
        with open(path, "a"):
            pass
        attempts[path] = "written"
    except OSError as exc:
        attempts[path] = errno.errorcode[exc.errno]
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                  "groups": os.getgroups(), "writable": writable[:40], "attempts": attempts}))
"""


def test_runs_as_uid_10001_and_cannot_write_outside_tmp(tier: Tier) -> None:
    result = run_once(tier.runner, tier.gateway, ["python", "-c", IDENTITY])
    assert result.code == 0, result.output
    seen = json.loads(result.output.strip().splitlines()[-1])
    assert (seen["uid"], seen["euid"], seen["gid"]) == (10001, 10001, 10001)
    assert set(seen["groups"]) <= {10001}
    assert seen["writable"] == [], "writable by uid 10001 outside /tmp"
    attempts = seen["attempts"]
    assert attempts.pop("/tmp/probe") == "written"
    # EACCES, not EROFS: the file system is writable; the user is not allowed.
    assert set(attempts.values()) == {"EACCES"}, attempts


DISTRIBUTIONS = """
import importlib.metadata as md, json, os, platform, sys
marker_env = {  # PEP 508's environment markers, as the image's Python sees them
    "python_version": "%d.%d" % sys.version_info[:2], "python_full_version": platform.python_version(),
    "sys_platform": sys.platform, "platform_system": platform.system(), "os_name": os.name,
    "platform_machine": platform.machine(), "platform_python_implementation":
    platform.python_implementation(), "implementation_name": sys.implementation.name,
}
print(json.dumps({"env": marker_env,
                  "requires": {d.metadata["Name"]: d.requires or [] for d in md.distributions()}}))
"""


def _closure(requires: dict[str, list[str]], root: str, env: dict[str, str]) -> set[str]:
    """The distributions ``root`` needs without extras, following the requirements' markers
    evaluated in ``env`` (the image's Python: its version is not the one running the tests)."""
    table = {canonicalize_name(name): specs for name, specs in requires.items()}
    needed, todo = set(), [(canonicalize_name(root), "")]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in needed:
            continue
        needed.add((name, extra))
        for spec in table.get(name, []):
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({**env, "extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ("", *sorted(req.extras))]
    return {name for name, _ in needed}


def test_holds_the_gateway_dependencies_and_nothing_else(tier: Tier) -> None:
    result = run_once(tier.runner, tier.gateway, ["python", "-c", DISTRIBUTIONS])
    assert result.code == 0, result.output
    seen = json.loads(result.output.strip().splitlines()[-1])
    requires = seen["requires"]
    installed = {canonicalize_name(name) for name in requires}
    needed = _closure(requires, "quantroute", seen["env"])
    assert installed == needed, f"stray: {installed - needed}; missing: {needed - installed}"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = {
        canonicalize_name(Requirement(spec).name)
        for specs in extras["optional-dependencies"].values()
        for spec in specs
    } - {"quantroute"}
    assert {"pytest", "ruff", "mypy", "openai", "matplotlib", "httpx2"} <= optional
    assert not installed & (optional - needed), "test, dev or profiler dependencies inside"
    assert not installed & {"pip", "setuptools", "wheel"}


def test_commands_work_without_the_extras_and_say_how_to_get_them(tier: Tier) -> None:
    image, runner = tier.gateway, tier.runner
    helped = run_once(runner, image, ["quantroute", "--help"])
    assert helped.code == 0 and "serve" in helped.output and "profile" in helped.output
    checked = run_once(runner, image, ["quantroute", "check-config", CONFIG])
    assert checked.code == 0 and f"{CONFIG}: OK" in checked.output, checked.output
    plot = run_once(runner, image, ["quantroute", "matrix", "plot", "m.json", "-o", "/tmp/m.png"])
    assert plot.code == 1 and PROFILER_HINT in plot.output, plot.output
    assert "Traceback" not in plot.output
    profile = run_once(runner, image, ["quantroute", "profile", "--config", CONFIG])
    assert profile.code == 1 and PROFILER_HINT in profile.output, profile.output


def test_preflight_init_container_runs_its_shipped_arguments(tier: Tier) -> None:
    """deploy/variants' pre-flight runs this image with `quantroute check-vllm-args ...`."""
    patch = ROOT / "deploy" / "variants" / "llama3-8b-awq" / "deployment-patch.yaml"
    pod = yaml.safe_load(patch.read_text())["spec"]["template"]["spec"]
    (preflight,) = pod["initContainers"]
    args = list(preflight["args"])
    ok = run_once(tier.runner, tier.gateway, ["quantroute", *args])
    assert ok.code == 0 and "ok:" in ok.output, ok.output
    float32 = [a if not a.startswith("--dtype") else "--dtype=float32" for a in args]
    refused = run_once(tier.runner, tier.gateway, ["quantroute", *float32])
    assert refused.code == 2, refused.output
