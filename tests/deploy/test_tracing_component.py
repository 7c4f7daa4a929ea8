"""components/tracing: the gateway and every vLLM pod export traces to one collector."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from quantroute.cli import main as cli_main
from quantroute.config import TracingConfig
from quantroute.observe.settings import TracingSettings, resolve_tracing
from quantroute.preflight import parse_vllm_args

from .helpers import DEPLOY, Obj, container, gateway_config_text, one, render, vllm_deployments
from .test_render import _errors

COLLECTOR = "http://otel-collector.observability.svc:4318"


def _render_default_with_tracing(tmp_path: Path) -> list[Obj]:
    deploy = os.path.relpath(DEPLOY, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {deploy}/overlays/default\n"
        f"components:\n  - {deploy}/components/tracing\n"
    )
    return render(tmp_path)


def _env(c: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "(from the pod)") for e in c.get("env", [])}


def test_component_renders_valid_objects(tmp_path: Path) -> None:
    objs = _render_default_with_tracing(tmp_path)
    problems = {
        f"{o['kind']}/{o['metadata']['name']}": err for o in objs if (err := _errors(o)) is not None
    }
    assert problems == {}


def test_gateway_traces_to_the_collector_through_the_standard_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = _render_default_with_tracing(tmp_path)
    gateway = container(
        one(objs, "Deployment", "quantroute-gateway")["spec"]["template"]["spec"], "gateway"
    )
    env = _env(gateway)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR
    assert resolve_tracing(TracingConfig(), env, available=True) == TracingSettings(
        None, "quantroute-gateway", None
    )
    # The shipped gateway config, under that environment, passes check-config with tracing on.
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(objs))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli_main(["check-config", str(path)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# tracing")]
    assert said == [
        "# tracing on: service quantroute-gateway, sampling OTEL_TRACES_SAMPLER, "
        "export from OTEL_EXPORTER_OTLP_* (default localhost:4318); no access log"
    ]


def test_every_vllm_pod_exports_over_http_and_the_preflight_sees_the_same_arguments(
    tmp_path: Path,
) -> None:
    objs = _render_default_with_tracing(tmp_path)
    deployments = vllm_deployments(objs)
    assert len(deployments) == 3
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        vllm = container(spec, "vllm")
        args = parse_vllm_args(vllm["args"])
        assert args.options["--otlp-traces-endpoint"] == COLLECTOR + "/v1/traces"
        assert _env(vllm)["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
        preflight = container(spec, "preflight", init=True)
        assert preflight["args"][preflight["args"].index("--") + 1 :] == vllm["args"]


def _image_requirements(extras: str) -> set[str]:
    """What deploy/docker/venv.sh installs into the image for the EXTRAS build argument (the
    Dockerfile's `sh venv.sh deps "$EXTRAS"`), by running its own requirements step."""
    script = (DEPLOY / "docker" / "venv.sh").read_text()
    step = script.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", step, extras],
        cwd=DEPLOY.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {canonicalize_name(Requirement(line).name) for line in done.stdout.split()}


def test_the_image_gets_the_tracing_extra_from_its_extras_build_argument() -> None:
    """The default image has no extras (tests/image); built with `--extras tracing` it holds
    what the gateway imports to export traces, which this component needs."""
    exporter = {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}
    assert not exporter & _image_requirements("")
    assert exporter <= _image_requirements("tracing")
    assert 'ARG EXTRAS=""' in (DEPLOY.parent / "Dockerfile").read_text()
    told = (DEPLOY / "components" / "tracing" / "kustomization.yaml").read_text()
    assert "scripts/build-image --extras tracing" in told  # the component says how to get it
