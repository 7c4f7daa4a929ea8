"""Access control in the manifests (components/access): NetworkPolicies, by which pods they select
and which connections they let through; the vLLM key shared through one Secret; vLLM locked down."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quantroute.config import GatewayConfig, parse_config

from .helpers import (
    OVERLAYS,
    Obj,
    container,
    find,
    gateway_config_text,
    one,
    render_overlay,
    vllm_deployments,
)
from .netpol import Cluster, Pod

NS = "quantroute"


def _pod(deployment: Obj, name: str) -> Pod:
    template = deployment["spec"]["template"]
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }
    return Pod(name, deployment["metadata"]["namespace"], template["metadata"]["labels"], ports)


def _cluster(objs: list[Obj]) -> Cluster:
    pods = [_pod(d, d["metadata"]["name"] + "-pod") for d in find(objs, "Deployment")]
    pods += [
        Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        Pod("grafana", "monitoring", {"app.kubernetes.io/name": "grafana"}),
        Pod("impostor-prometheus", "default", {"app.kubernetes.io/name": "prometheus"}),
        Pod("debug", NS, {"run": "debug"}),
        Pod("client-app", "apps", {"app": "chat-ui"}),
        Pod("stranger", "default", {"app": "anything"}),
        Pod("gateway-lookalike", "default", {"app.kubernetes.io/name": "quantroute-gateway"}),
    ]
    namespaces = {
        NS: {},
        "monitoring": {},
        "default": {},
        "apps": {"quantroute.io/gateway-client": "true"},
    }
    return Cluster(namespaces, pods)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_network_policy_selects_exactly_its_pods(overlay: str) -> None:
    objs = render_overlay(overlay)
    cluster = _cluster(objs)
    policies = {p["metadata"]["name"]: p for p in find(objs, "NetworkPolicy")}
    vllm = {d["metadata"]["name"] + "-pod" for d in vllm_deployments(objs)}
    assert vllm and len(vllm) == (3 if overlay != "small" else 1)
    assert cluster.selected_by(policies["vllm-ingress"]) == vllm
    assert cluster.selected_by(policies["quantroute-gateway-ingress"]) == {"quantroute-gateway-pod"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_who_may_connect_where(overlay: str) -> None:
    objs = render_overlay(overlay)
    cluster = _cluster(objs)
    policies = find(objs, "NetworkPolicy")
    vllm = sorted(d["metadata"]["name"] + "-pod" for d in vllm_deployments(objs))
    gateway = "quantroute-gateway-pod"
    for server in vllm:
        allowed = {src for src in cluster.pods if cluster.allowed(src, server, 8000, policies)}
        assert allowed == {gateway, "prometheus"}, server
        assert not cluster.allowed(gateway, server, 8001, policies)
    api = {src for src in cluster.pods if cluster.allowed(src, gateway, 8080, policies)}
    assert api == {gateway, *vllm, "debug", "client-app"}  # own namespace + labelled ones
    metrics = {src for src in cluster.pods if cluster.allowed(src, gateway, 9090, policies)}
    assert metrics == {"prometheus"}


def _gateway_config(objs: list[Obj]) -> GatewayConfig:
    return parse_config(yaml.safe_load(gateway_config_text(objs)), "gateway.yaml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_requires_the_key_the_gateway_mounts(overlay: str) -> None:
    objs = render_overlay(overlay)
    config = _gateway_config(objs)
    gateway_dep = one(objs, "Deployment", "quantroute-gateway")
    spec = gateway_dep["spec"]["template"]["spec"]
    gateway = container(spec, "gateway")
    credential = config.access.upstream_auth.default
    assert credential is not None and credential.api_key_file is not None
    key_file = credential.api_key_file
    mount = next(m for m in gateway["volumeMounts"] if key_file.parent == Path(m["mountPath"]))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    secret = volume["secret"]["secretName"]
    for deployment in vllm_deployments(objs):
        vllm = container(deployment["spec"]["template"]["spec"], "vllm")
        env = {e["name"]: e for e in vllm["env"]}
        ref = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret, key_file.name)
        assert not ref.get("optional", False)  # no key, no server: never an open vLLM
        assert not any("api-key" in a or "VLLM_API_KEY" in a for a in vllm["args"])
    # client keys come from a Secret too, and /metrics has its own port
    keys_file = config.access.keys_file
    assert keys_file is not None
    assert any(keys_file.parent == Path(m["mountPath"]) for m in gateway["volumeMounts"])
    assert config.access.metrics_port == 9090


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_runs_locked_down_with_writable_paths_as_empty_dirs(overlay: str) -> None:
    for deployment in vllm_deployments(render_overlay(overlay)):
        spec = deployment["spec"]["template"]["spec"]
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        vllm = container(spec, "vllm")
        ctx = vllm["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        env = {e["name"]: e.get("value") for e in vllm["env"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in vllm["volumeMounts"]}
        writable = {"/tmp", "/dev/shm", env["HOME"], env["HF_HOME"], env["XDG_CACHE_HOME"]}
        for path in writable:
            covering = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
            assert covering, f"{path} is not on a volume"
            assert all("emptyDir" in mounts[m] for m in covering), path
        assert env["USER"]  # getpass.getuser() without a passwd entry
