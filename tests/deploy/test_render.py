"""Every kustomization renders, and every rendered object validates against its schema.

Built-in kinds: the Kubernetes 1.32 OpenAPI schemas of ``kubernetes-validate``, strict (unknown
fields rejected). Prometheus Operator kinds (ServiceMonitor, PodMonitor, PrometheusRule) and the
Gateway API's HTTPRoute: their CRDs' openAPIV3Schema, vendored in ``schemas/`` and made strict the
same way (see its README). The optional components render on top of every overlay.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from .helpers import (
    OPTIONAL_COMPONENTS,
    OVERLAYS,
    Obj,
    copy_deploy,
    one,
    render,
    render_overlay,
    with_components,
)

KUBERNETES_VERSION = "1.32"
SCHEMAS = Path(__file__).parent / "schemas"
# kind -> (apiVersion, vendored schema file)
CRD_KINDS = {
    "ServiceMonitor": ("monitoring.coreos.com/v1", "servicemonitor-monitoring-v1.json"),
    "PodMonitor": ("monitoring.coreos.com/v1", "podmonitor-monitoring-v1.json"),
    "PrometheusRule": ("monitoring.coreos.com/v1", "prometheusrule-monitoring-v1.json"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "httproute-gateway-v1.json"),
}


@cache
def _crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / CRD_KINDS[kind][1]).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(obj: Obj) -> None:
    """Raise a ValidationError if ``obj`` does not fit its kind's schema."""
    if obj["kind"] in CRD_KINDS:
        assert obj["apiVersion"] == CRD_KINDS[obj["kind"]][0]
        _crd_validator(obj["kind"]).validate(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _errors(obj: Obj) -> str | None:
    try:
        validate(obj)
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
        return str(exc.message)
    return None


def _problems(objs: list[Obj]) -> dict[str, str]:
    return {
        f"{o['kind']}/{o['metadata']['name']}": err for o in objs if (err := _errors(o)) is not None
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay: str) -> None:
    objs = render_overlay(overlay)
    assert objs
    assert _problems(objs) == {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_optional_component_renders_and_validates_on_each_overlay(
    overlay: str, tmp_path: Path
) -> None:
    """components/{matrix,annotation-scrape,ingress,gateway-api}, all at once on each overlay."""
    objs = render(with_components(copy_deploy(tmp_path), overlay, OPTIONAL_COMPONENTS))
    kinds = {o["kind"] for o in objs}
    assert {"Ingress", "HTTPRoute"} <= kinds
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # annotation-scrape
    assert _problems(objs) == {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_application(overlay: str) -> None:
    objs = render_overlay(overlay)
    kinds = {o["kind"] for o in objs}
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    }
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"quantroute"}


def test_unknown_kind_is_not_silently_accepted() -> None:
    """A kind without a schema must fail validation rather than pass unchecked."""
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def _mutated(obj: Obj, path: list[Any], value: Any) -> Obj:
    clone = copy.deepcopy(obj)
    node = clone
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return clone


NEGATIVE_CASES = [
    ("Deployment", "quantroute-gateway", ["spec", "replica"], 2),
    ("Deployment", "quantroute-gateway", ["spec", "replicas"], "two"),
    ("HorizontalPodAutoscaler", "vllm-llama3-8b-awq", ["spec", "minReplica"], 1),
    ("PodDisruptionBudget", "vllm-llama3-8b-awq", ["spec", "maxUnavailble"], 0),
    ("ServiceMonitor", "quantroute-gateway", ["spec", "endpoint"], []),
    ("ServiceMonitor", "quantroute-gateway", ["spec", "endpoints", 0, "intervall"], "15s"),
    ("PodMonitor", "vllm", ["spec", "podMetricsEndpoints", 0, "interval"], "15 seconds"),
    ("PrometheusRule", "quantroute", ["spec", "groups", 0, "rules", 0, "fore"], "5m"),
    ("HTTPRoute", "quantroute-gateway", ["spec", "rules", 0, "timeouts", "request"], "10 min"),
    ("HTTPRoute", "quantroute-gateway", ["spec", "rules", 0, "backendRef"], []),
    # extensions/v1beta1's field, gone from networking.k8s.io/v1: a common copy-paste mistake.
    (
        "Ingress",
        "quantroute-gateway",
        ["spec", "rules", 0, "http", "paths", 0, "backend", "serviceName"],
        "quantroute-gateway",
    ),
]


@pytest.fixture(scope="module")
def with_everything(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The default overlay with the ingress and Gateway API components."""
    deploy = copy_deploy(tmp_path_factory.mktemp("deploy"))
    return render(with_components(deploy, "default", ("ingress", "gateway-api")))


@pytest.mark.parametrize(("kind", "name", "path", "value"), NEGATIVE_CASES)
def test_validation_rejects_a_broken_object(
    kind: str, name: str, path: list[Any], value: Any, with_everything: list[Obj]
) -> None:
    obj = one(with_everything, kind, name)
    assert _errors(obj) is None
    assert _errors(_mutated(obj, path, value)) is not None


def test_prometheus_rule_without_expr_is_rejected() -> None:
    rule = one(render_overlay("default"), "PrometheusRule", "quantroute")
    broken = copy.deepcopy(rule)
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    assert _errors(broken) is not None
