"""Every kustomization renders, and every rendered object validates against its schema.

Built-in kinds: the Kubernetes 1.32 OpenAPI schemas of ``kubernetes-validate``, strict (unknown
fields rejected). Prometheus Operator kinds (ServiceMonitor, PodMonitor, PrometheusRule): their
CRDs' openAPIV3Schema, vendored in ``schemas/`` and made strict the same way (see its README).
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

from .helpers import DEPLOY, OVERLAYS, Obj, find, one, render, render_overlay

KUBERNETES_VERSION = "1.32"
SCHEMAS = Path(__file__).parent / "schemas"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@cache
def _crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind.lower()}-monitoring-v1.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(obj: Obj) -> None:
    """Raise a ValidationError if ``obj`` does not fit its kind's schema."""
    if obj["kind"] in CRD_KINDS:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        _crd_validator(obj["kind"]).validate(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _errors(obj: Obj) -> str | None:
    try:
        validate(obj)
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
        return exc.message
    return None


ALL_RENDERS = [*(f"overlays/{o}" for o in OVERLAYS), "prometheus-adapter"]


@pytest.mark.parametrize("directory", ALL_RENDERS)
def test_every_rendered_object_validates(directory: str) -> None:
    objs = render(DEPLOY / directory)
    assert objs
    problems = {
        f"{o['kind']}/{o['metadata']['name']}": err for o in objs if (err := _errors(o)) is not None
    }
    assert problems == {}


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
]


@pytest.mark.parametrize(("kind", "name", "path", "value"), NEGATIVE_CASES)
def test_validation_rejects_a_broken_object(
    kind: str, name: str, path: list[Any], value: Any
) -> None:
    obj = one(render_overlay("default"), kind, name)
    assert _errors(obj) is None
    assert _errors(_mutated(obj, path, value)) is not None


def test_prometheus_rule_without_expr_is_rejected() -> None:
    rule = one(render_overlay("default"), "PrometheusRule", "quantroute")
    broken = copy.deepcopy(rule)
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    assert _errors(broken) is not None


def test_adapter_renders_its_config_map_in_the_monitoring_namespace() -> None:
    objs = render(DEPLOY / "prometheus-adapter")
    (cm,) = find(objs, "ConfigMap")
    assert cm["metadata"] == {
        "name": "prometheus-adapter",
        "namespace": "monitoring",
        "labels": {
            "app.kubernetes.io/name": "prometheus-adapter",
            "app.kubernetes.io/part-of": "quantroute",
        },
    }
    assert "vllm_num_requests_running" in cm["data"]["config.yaml"]
