"""Kubernetes service discovery in the shipped manifests (docs/discovery.md).

Every vLLM pod template's discovery annotations equal its container's arguments, and the backend
the gateway's own pod reader (:func:`quantroute.discovery.pods.read_pod`) builds from the pod
equals the gateway config's backend for that variant; the discovery overlay selects exactly the
vLLM pods, may read them (RBAC, token) and discovers the default fleet.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from quantroute.cli import main as cli_main
from quantroute.config import BackendConfig, GatewayConfig, KubernetesDiscoveryConfig, load_config
from quantroute.discovery import pods
from quantroute.preflight import parse_vllm_args

from .helpers import (
    GPU_POOLS,
    OVERLAYS,
    STATIC_OVERLAYS,
    Obj,
    container,
    find,
    gateway_config_text,
    one,
    render_overlay,
    vllm_deployments,
)

POD_IP = "10.1.2.3"
VLLM_DEFAULT_PORT = "8000"
# Annotation -> the vllm flag whose value it repeats.
ARGUMENT_OF = {
    pods.MAX_MODEL_LEN: "--max-model-len",
    pods.MAX_NUM_SEQS: "--max-num-seqs",
    pods.QUANTIZATION: "--quantization",
    pods.PORT: "--port",
}


def _config(objs: list[Obj], tmp_path: Path) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(objs))
    return load_config(path)


def _kube(config: GatewayConfig) -> KubernetesDiscoveryConfig:
    assert config.discovery is not None and config.discovery.kubernetes is not None
    return config.discovery.kubernetes


def annotation_mismatches(deployment: Obj) -> list[str]:
    """Where a vLLM pod template's discovery annotations disagree with its container."""
    template = deployment["spec"]["template"]
    annotations: dict[str, str] = template["metadata"].get("annotations", {})
    vllm = container(template["spec"], "vllm")
    args = parse_vllm_args(vllm["args"])
    port = next(str(p["containerPort"]) for p in vllm["ports"] if p["name"] == "http")
    problems = []
    served = annotations.get(pods.SERVED_MODEL_NAME)
    if served not in args.names:
        problems.append(f"{pods.SERVED_MODEL_NAME}={served!r}, vllm serves {args.names}")
    for key, flag in ARGUMENT_OF.items():
        default = VLLM_DEFAULT_PORT if flag == "--port" else None
        if annotations.get(key) != args.options.get(flag, default):
            problems.append(f"{key}={annotations.get(key)!r}, {flag} {args.options.get(flag)!r}")
    if annotations.get(pods.PORT) != port:
        problems.append(f"{pods.PORT}={annotations.get(pods.PORT)!r}, containerPort {port}")
    return problems


def pod_of(deployment: Obj, name_suffix: str = "5f7c9-abcde") -> Obj:
    """A Ready pod of the Deployment, as the API server would list it."""
    template = copy.deepcopy(deployment["spec"]["template"])
    metadata = template["metadata"]
    metadata["name"] = f"{deployment['metadata']['name']}-{name_suffix}"
    metadata["namespace"] = deployment["metadata"]["namespace"]
    status = {
        "phase": "Running",
        "podIP": POD_IP,
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return {"metadata": metadata, "spec": template["spec"], "status": status}


def discovered(deployment: Obj, cfg: KubernetesDiscoveryConfig) -> BackendConfig:
    view = pods.read_pod(pod_of(deployment), cfg)
    assert view.serving
    assert view.backend is not None, view.problem
    return view.backend


def settings(backend: BackendConfig) -> Obj:
    """What routing uses of a backend, apart from where it is (id, url)."""
    return backend.model_dump(exclude={"id", "url"})


def backend_differences(deployment: Obj, static: tuple[BackendConfig, ...]) -> Obj:
    """Fields in which the pod's discovered backend differs from the static one of its variant."""
    found = discovered(deployment, KubernetesDiscoveryConfig())
    (same,) = [b for b in static if b.variant_id == found.variant_id]
    mine, theirs = settings(found), settings(same)
    differences = {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}
    if found.url.rsplit(":", 1)[1] != same.url.rsplit(":", 1)[1]:
        differences["port"] = (found.url, same.url)
    return differences


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selector (``a=b,c!=d,e,!f``) against a pod's labels."""
    for term in (t.strip() for t in selector.split(",")):
        if " in " in term or " notin " in term:
            pytest.fail(f"set-based selector terms are not handled here: {term!r}")
        key, op, value = term.partition("!=")
        if op:
            ok = labels.get(key.strip()) != value.strip()
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            ok = labels.get(key.strip()) == value.strip()
        else:
            ok = (term[1:] not in labels) if term.startswith("!") else term in labels
        if not ok:
            return False
    return True


def token_mounted(objs: list[Obj]) -> bool:
    """Whether the gateway pods get their ServiceAccount token (pod spec wins; default true)."""
    spec = one(objs, "Deployment", "quantroute-gateway")["spec"]["template"]["spec"]
    account = one(objs, "ServiceAccount", spec["serviceAccountName"])
    if "automountServiceAccountToken" in spec:
        return bool(spec["automountServiceAccountToken"])
    return bool(account.get("automountServiceAccountToken", True))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_annotations_equal_the_container_arguments(overlay: str) -> None:
    deployments = vllm_deployments(render_overlay(overlay))
    assert deployments
    for deployment in deployments:
        assert annotation_mismatches(deployment) == [], deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["quantroute.io/role"] == "backend"
        assert pods.VARIANT_LABEL in labels


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (pods.SERVED_MODEL_NAME, "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"),
        (pods.MAX_MODEL_LEN, "16384"),
        (pods.MAX_NUM_SEQS, "128"),
        (pods.QUANTIZATION, "awq"),
        (pods.PORT, "8001"),
        (pods.MAX_NUM_SEQS, None),
    ],
)
def test_annotation_check_finds_a_disagreement(key: str, value: str | None) -> None:
    deployment = one(render_overlay("default"), "Deployment", "vllm-llama3-8b-awq")
    assert annotation_mismatches(deployment) == []
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    if value is None:
        del annotations[key]
    else:
        annotations[key] = value
    problems = annotation_mismatches(deployment)
    assert problems
    assert all(key in problem for problem in problems)


@pytest.mark.parametrize("overlay", STATIC_OVERLAYS)
def test_discovered_backends_equal_the_static_gateway_config(overlay: str, tmp_path: Path) -> None:
    """Annotations carry the overlay's gateway.yaml values: GPU, $/hour, limits, quantization."""
    objs = render_overlay(overlay)
    config = _config(objs, tmp_path)
    for deployment in vllm_deployments(objs):
        assert backend_differences(deployment, config.backends) == {}
        gpu = discovered(deployment, KubernetesDiscoveryConfig()).gpu
        pool = deployment["spec"]["template"]["spec"]["nodeSelector"]
        assert pool == {"nvidia.com/gpu.product": GPU_POOLS[gpu]}


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        (pods.GPU_COST_PER_HOUR, "4.50", "gpu_cost_per_hour"),
        (pods.GPU, "H100", "gpu"),
        (pods.QUANTIZATION, "gptq_marlin", "quantization"),
        (pods.PORT, "9000", "port"),
    ],
)
def test_gateway_cross_check_finds_a_difference(
    key: str, value: str, field: str, tmp_path: Path
) -> None:
    objs = render_overlay("default")
    config = _config(objs, tmp_path)
    deployment = one(objs, "Deployment", "vllm-llama3-8b-awq")
    deployment["spec"]["template"]["metadata"]["annotations"][key] = value
    assert list(backend_differences(deployment, config.backends)) == [field]


def test_discovery_gateway_config_passes_check_config(tmp_path: Path) -> None:
    objs = render_overlay("discovery")
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(objs))
    assert cli_main(["check-config", str(path)]) == 0
    config = load_config(path)
    assert config.backends == ()
    kube = _kube(config)
    # In-cluster credentials (the ServiceAccount token), the pods' own port annotation, the
    # gateway pod's own namespace (POD_NAMESPACE).
    assert (kube.api_url, kube.kubeconfig, kube.port, kube.scheme, kube.namespace) == (
        None,
        None,
        None,
        "http",
        None,
    )


def watched_namespace(objs: list[Obj], kube: KubernetesDiscoveryConfig) -> str:
    """Where the gateway looks for pods: the config's namespace, else its pod's POD_NAMESPACE."""
    if kube.namespace is not None:
        return kube.namespace
    gateway = one(objs, "Deployment", "quantroute-gateway")
    env = {e["name"]: e for e in container(gateway["spec"]["template"]["spec"], "gateway")["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    namespace: str = gateway["metadata"]["namespace"]
    return namespace


def test_discovery_selects_exactly_the_vllm_pods(tmp_path: Path) -> None:
    objs = render_overlay("discovery")
    kube = _kube(_config(objs, tmp_path))
    selected = [
        d["metadata"]["name"]
        for d in find(objs, "Deployment")
        if d["metadata"]["namespace"] == watched_namespace(objs, kube)
        and selects(kube.label_selector, d["spec"]["template"]["metadata"]["labels"])
    ]
    assert selected == [d["metadata"]["name"] for d in vllm_deployments(objs)]
    assert len(selected) == 3


def test_discovery_overlay_discovers_the_default_fleet(tmp_path: Path) -> None:
    objs = render_overlay("discovery")
    config = _config(objs, tmp_path)
    (tmp_path / "default").mkdir()
    default = _config(render_overlay("default"), tmp_path / "default")
    found = [discovered(d, _kube(config)) for d in vllm_deployments(objs)]
    assert {b.variant_id: settings(b) for b in found} == {
        b.variant_id: settings(b) for b in default.backends
    }
    assert {b.url for b in found} == {f"http://{POD_IP}:8000"}
    names = {d["metadata"]["name"] for d in vllm_deployments(objs)}
    assert {b.id for b in found} == {f"{name}-5f7c9-abcde" for name in names}
    assert (config.groups, config.policy) == (default.groups, default.policy)


def test_discovery_overlay_lets_the_gateway_read_pods(tmp_path: Path) -> None:
    objs = render_overlay("discovery")
    kube = _kube(_config(objs, tmp_path))
    gateway = one(objs, "Deployment", "quantroute-gateway")
    (role,) = find(objs, "Role")
    assert role["metadata"]["namespace"] == watched_namespace(objs, kube)
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    (binding,) = find(objs, "RoleBinding")
    assert binding["metadata"]["namespace"] == watched_namespace(objs, kube)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": gateway["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": gateway["metadata"]["namespace"],
        }
    ]
    assert token_mounted(objs)
    assert "quantroute.io/role" not in gateway["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", STATIC_OVERLAYS)
def test_static_overlays_give_the_gateway_no_api_access(overlay: str) -> None:
    objs = render_overlay(overlay)
    assert not token_mounted(objs)
    assert find(objs, "Role") == find(objs, "RoleBinding") == []
