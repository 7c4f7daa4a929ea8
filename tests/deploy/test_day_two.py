"""The day-two defects of issue 20, each as an assertion over the rendered overlays.

Every test here failed on the manifests before the fix it guards: an HPA-managed Deployment with
``replicas:``, a gateway image override that rewrote the vLLM pods, PDBs that allowed no eviction,
the prometheus-adapter ConfigMap overwritten whole, a preflight reading a ConfigMap edited in
place and failing on warnings, grace periods shorter than a stream, pods scraped twice, a progress
deadline shorter than the startup probe, weights without an ephemeral-storage request, replicas
without spread, a namespace hard-coded into the discovery config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from quantroute import __version__
from quantroute.cli import main as cli_main
from quantroute.config import GatewayConfig, load_config
from quantroute.preflight import parse_vllm_args

from .helpers import (
    ADAPTER_RULES,
    ADAPTER_VALUES,
    DEPLOY,
    OVERLAYS,
    Obj,
    adapter_rules,
    container,
    copy_deploy,
    edit_yaml,
    find,
    gateway_config_text,
    labels_match,
    one,
    pod_templates,
    render,
    render_overlay,
    vllm_deployments,
    with_components,
)

# CoreDNS's kubernetes plugin answers with TTL 5 s (and its cache keeps an answer no longer).
DNS_TTL_S = 5
# Endpoint removal reaching CoreDNS / the API watch, and a decision already taken.
PROPAGATION_MARGIN_S = 5
# Approximate size of each variant's weights on disk (the Hugging Face checkpoints' safetensors).
WEIGHTS_GB = {"llama3-8b-awq": 5.7, "qwen25-7b-gptq": 5.6, "llama3-70b-awq": 39.8}
# Image pull, scheduling and the preflight, on top of the startup probe's allowance.
START_MARGIN_S = 300


def _config(objs: list[Obj], tmp_path: Path) -> GatewayConfig:
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(objs))
    return load_config(path)


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?", str(quantity))
    assert match, quantity
    return float(match.group(1)) * units.get(match.group(2) or "", 1)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# -- replicas belong to the HPA --------------------------------------------------------------


def hpa_managed_with_replicas(objs: list[Obj]) -> list[str]:
    targets = {
        (h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
        for h in find(objs, "HorizontalPodAutoscaler")
    }
    return [
        o["metadata"]["name"]
        for o in objs
        if (o["kind"], o["metadata"]["name"]) in targets and "replicas" in o["spec"]
    ]


def test_no_replicas_on_a_deployment_an_hpa_scales(overlay: str) -> None:
    """`kubectl apply -k` would reset each HPA-scaled Deployment to this count."""
    objs = render_overlay(overlay)
    assert find(objs, "HorizontalPodAutoscaler")
    assert hpa_managed_with_replicas(objs) == []
    for deployment in find(objs, "Deployment"):  # the others say how many they want
        if deployment["metadata"]["name"] not in {
            h["spec"]["scaleTargetRef"]["name"] for h in find(objs, "HorizontalPodAutoscaler")
        }:
            assert deployment["spec"]["replicas"] >= 1


def test_the_replicas_check_finds_a_count_under_an_hpa() -> None:
    objs = render_overlay("default")
    one(objs, "Deployment", "vllm-qwen25-7b-gptq")["spec"]["replicas"] = 1
    assert hpa_managed_with_replicas(objs) == ["vllm-qwen25-7b-gptq"]


# -- the gateway's image override leaves the GPU servers alone ------------------------------


def changed_objects(before: list[Obj], after: list[Obj]) -> set[str]:
    def key(o: Obj) -> str:
        return f"{o['kind']}/{o['metadata']['name']}"

    old = {key(o): o for o in before}
    new = {key(o): o for o in after}
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def _retag(deploy: Path, overlay: str, image: str, tag: str) -> list[Obj]:
    def change(data: Obj) -> None:
        (entry,) = [i for i in data["images"] if i["name"] == image]
        entry["newTag"] = tag

    edit_yaml(deploy / "overlays" / overlay / "kustomization.yaml", change)
    return render(deploy / "overlays" / overlay)


def test_the_gateway_image_override_touches_only_the_gateway(overlay: str, tmp_path: Path) -> None:
    deploy = copy_deploy(tmp_path)
    before = render(deploy / "overlays" / overlay)
    after = _retag(deploy, overlay, "quantroute", "0.2.0")
    assert changed_objects(before, after) == {"Deployment/quantroute-gateway"}
    gateway = one(after, "Deployment", "quantroute-gateway")["spec"]["template"]["spec"]
    assert container(gateway, "gateway")["image"] == "quantroute:0.2.0"


def test_the_preflight_image_override_touches_only_the_vllm_servers(
    overlay: str, tmp_path: Path
) -> None:
    deploy = copy_deploy(tmp_path)
    before = render(deploy / "overlays" / overlay)
    after = _retag(deploy, overlay, "quantroute-preflight", "0.2.0")
    assert changed_objects(before, after) == {
        f"Deployment/{d['metadata']['name']}" for d in vllm_deployments(before)
    }


# -- every PodDisruptionBudget lets a drain through -----------------------------------------


def disruptions_allowed(objs: list[Obj], pdb: Obj) -> int:
    """Evictions the PDB allows with every selected pod healthy, at the fewest replicas."""
    selector = pdb["spec"]["selector"]["matchLabels"]
    (workload,) = [
        d for d, t in pod_templates(objs) if labels_match(selector, t["metadata"]["labels"])
    ]
    hpa = [
        h
        for h in find(objs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
    ]
    fewest: int = hpa[0]["spec"]["minReplicas"] if hpa else workload["spec"].get("replicas", 1)
    spec = pdb["spec"]
    if "maxUnavailable" in spec:
        return min(int(spec["maxUnavailable"]), fewest)
    return fewest - int(spec["minAvailable"])


def test_every_pdb_allows_an_eviction_and_always_evicts_unready_pods(overlay: str) -> None:
    """maxUnavailable: 0 blocked every node drain; a not-Ready pod (a gateway that knows no
    backend yet, a vLLM still loading) must never hold a drain either."""
    objs = render_overlay(overlay)
    pdbs = find(objs, "PodDisruptionBudget")
    assert len(pdbs) == 1 + len(vllm_deployments(objs))
    for pdb in pdbs:
        assert disruptions_allowed(objs, pdb) >= 1, pdb["metadata"]["name"]
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_pdb_check_finds_a_budget_that_blocks_drains() -> None:
    objs = render_overlay("default")
    pdb = one(objs, "PodDisruptionBudget", "vllm-llama3-70b-awq")
    pdb["spec"]["maxUnavailable"] = 0
    assert disruptions_allowed(objs, pdb) == 0
    del pdb["spec"]["maxUnavailable"]
    pdb["spec"]["minAvailable"] = 1
    assert disruptions_allowed(objs, pdb) == 0  # minReplicas 1


# -- prometheus-adapter: rules to add, never a whole config ---------------------------------


def kustomizations() -> list[Path]:
    """Every kustomization under deploy/ that renders on its own (components do not)."""
    found = []
    for path in sorted(DEPLOY.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent)
    return found


def test_the_adapter_rules_ship_as_fragments_never_as_a_config_map() -> None:
    """Applying a whole prometheus-adapter ConfigMap replaced the cluster's resource rules
    (`kubectl top`, CPU HPAs); the rules now ship as a list to add and as Helm values."""
    assert not (ADAPTER_RULES.parent / "kustomization.yaml").exists()
    directories = kustomizations()
    assert DEPLOY / "overlays" / "default" in directories
    for directory in directories:
        for obj in render(directory):
            assert obj["metadata"].get("namespace") in (None, "quantroute"), directory
            assert not (obj["kind"] == "ConfigMap" and "adapter" in obj["metadata"]["name"])
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    assert values == {"rules": {"custom": adapter_rules()}}  # nothing else of the chart's
    assert list(yaml.safe_load(ADAPTER_RULES.read_text())) == ["rules"]


# -- the preflight: nothing that changes under a running pod, fatal only on errors ----------


def mounted_config_maps(template: Obj) -> list[tuple[str, str, dict[str, Any]]]:
    """(container, ConfigMap name, mount) for every ConfigMap volume a container mounts."""
    spec = template["spec"]
    maps = {v["name"]: v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    return [
        (c["name"], maps[m["name"]], m)
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for m in c.get("volumeMounts", [])
        if m["name"] in maps
    ]


def unhashed_mounts(objs: list[Obj]) -> list[str]:
    """ConfigMaps mounted without a hash suffix: edited in place under running pods. Only the
    gateway's matrix may be (it hot-reloads it, mounted as a directory)."""
    generated = {
        o["metadata"]["name"]
        for o in find(objs, "ConfigMap")
        if re.search(r"-[a-z0-9]{10}$", o["metadata"]["name"])
    }
    problems = []
    for workload, template in pod_templates(objs):
        for name, config_map, mount in mounted_config_maps(template):
            hot_reload = (
                workload["metadata"]["name"] == "quantroute-gateway"
                and config_map == "quantroute-matrix"
                and "subPath" not in mount
            )
            if config_map not in generated and not hot_reload:
                problems.append(f"{workload['metadata']['name']}/{name}: {config_map}")
    return problems


def test_the_preflight_reads_nothing_edited_in_place_and_fails_only_on_errors(
    overlay: str,
) -> None:
    """A ConfigMap updated in place made the next vLLM restart (a node failure) stick in its
    init container, and any warning did so too."""
    objs = render_overlay(overlay)
    assert unhashed_mounts(objs) == []
    for deployment in vllm_deployments(objs):
        spec = deployment["spec"]["template"]["spec"]
        assert mounted_config_maps(deployment["spec"]["template"]) == []
        init = container(spec, "preflight", init=True)
        assert init["args"][:4] == ["check-vllm-args", "--fail-on", "error", "--"]
        args = container(spec, "vllm")["args"]
        # A warning (here: no --max-model-len) is printed but lets the pod start...
        warned = [a for a in args if not a.startswith("--max-model-len")]
        assert cli_main([*init["args"][:4], *warned]) == 0
        # ...an error (AWQ/GPTQ in float32: vLLM refuses to start) still stops it.
        broken = [a.replace("float16", "float32") for a in args]
        assert cli_main([*init["args"][:4], *broken]) == 2


def test_the_mount_check_finds_a_config_map_edited_in_place(tmp_path: Path) -> None:
    objs = render(with_components(copy_deploy(tmp_path), "default", ("matrix",)))
    assert unhashed_mounts(objs) == []  # the hot-reloaded matrix is the one exception
    template = one(objs, "Deployment", "vllm-llama3-8b-awq")["spec"]["template"]
    template["spec"]["volumes"].append({"name": "cfg", "configMap": {"name": "quantroute-x"}})
    template["spec"]["initContainers"][0]["volumeMounts"].append(
        {"name": "cfg", "mountPath": "/etc/x"}
    )
    assert unhashed_mounts(objs) == ["vllm-llama3-8b-awq/preflight: quantroute-x"]


# -- grace periods cover the longest stream -------------------------------------------------


def _pre_stop_s(c: Obj) -> int:
    seconds: int = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    return seconds


def test_grace_periods_cover_the_longest_stream(overlay: str, tmp_path: Path) -> None:
    objs = render_overlay(overlay)
    config = _config(objs, tmp_path)
    longest = config.policy.upstream_timeouts.total_s
    gateway = one(objs, "Deployment", "quantroute-gateway")["spec"]["template"]["spec"]
    assert gateway["terminationGracePeriodSeconds"] >= (
        _pre_stop_s(container(gateway, "gateway")) + longest
    )
    # How long a pod that leaves stays in the gateways' backend lists.
    dns = config.discovery.dns if config.discovery is not None else None
    forgotten_after = (dns.interval_s if dns else 0) + DNS_TTL_S + PROPAGATION_MARGIN_S
    for deployment in vllm_deployments(objs):
        spec = deployment["spec"]["template"]["spec"]
        vllm = container(spec, "vllm")
        # vLLM's default --shutdown-timeout is 0: SIGTERM aborts every running request.
        drain = float(parse_vllm_args(vllm["args"]).options["--shutdown-timeout"])
        assert drain >= longest
        assert _pre_stop_s(vllm) >= forgotten_after
        assert spec["terminationGracePeriodSeconds"] >= _pre_stop_s(vllm) + drain


# -- each pod scraped exactly once ----------------------------------------------------------


def scrapes(objs: list[Obj], template: Obj) -> int:
    """How many scrape configurations pick this pod: monitors and prometheus.io annotations."""
    labels = template["metadata"]["labels"]
    count = 0
    for monitor in find(objs, "PodMonitor"):
        count += labels_match(monitor["spec"]["selector"]["matchLabels"], labels)
    for monitor in find(objs, "ServiceMonitor"):
        for service in find(objs, "Service"):
            if labels_match(
                monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]
            ):
                count += labels_match(service["spec"]["selector"], labels)
    annotations = template["metadata"].get("annotations", {})
    count += annotations.get("prometheus.io/scrape") == "true"
    return int(count)


def _scrape_counts(objs: list[Obj]) -> dict[str, int]:
    return {d["metadata"]["name"]: scrapes(objs, t) for d, t in pod_templates(objs)}


def test_every_pod_is_scraped_once(overlay: str, tmp_path: Path) -> None:
    """Twice meant double-counted series and doubled HPA sums over the pod's metrics."""
    counts = _scrape_counts(render_overlay(overlay))
    assert set(counts.values()) == {1}, counts
    without_operator = render(
        with_components(copy_deploy(tmp_path), overlay, ("annotation-scrape",))
    )
    assert set(_scrape_counts(without_operator).values()) == {1}


def test_the_scrape_count_sees_annotations_beside_a_monitor() -> None:
    objs = render_overlay("default")
    template = one(objs, "Deployment", "vllm-llama3-8b-awq")["spec"]["template"]
    template["metadata"]["annotations"]["prometheus.io/scrape"] = "true"
    assert scrapes(objs, template) == 2


# -- slow starts, the weights' disk, spread, namespaces, versions ---------------------------


def longest_start_s(spec: Obj) -> int:
    probes = [c["startupProbe"] for c in spec["containers"] if "startupProbe" in c]
    return max(
        (
            p.get("initialDelaySeconds", 0)
            + p.get("periodSeconds", 10) * p.get("failureThreshold", 3)
            for p in probes
        ),
        default=0,
    )


def test_the_progress_deadline_outlasts_the_startup_probe(overlay: str) -> None:
    """At 600 s (the default) a 70B pod that takes its allowed 30 minutes fails the rollout."""
    for deployment, template in pod_templates(render_overlay(overlay)):
        deadline = deployment["spec"].get("progressDeadlineSeconds", 600)
        assert deadline >= longest_start_s(template["spec"]) + START_MARGIN_S


def test_the_weights_have_room_on_the_node(overlay: str) -> None:
    for deployment in vllm_deployments(render_overlay(overlay)):
        spec = deployment["spec"]["template"]["spec"]
        variant = deployment["spec"]["template"]["metadata"]["labels"]["quantroute.io/variant"]
        (models,) = [v for v in spec["volumes"] if v["name"] == "models"]
        size = _bytes(models["emptyDir"]["sizeLimit"])
        assert size >= 1.5 * WEIGHTS_GB[variant] * 1e9
        resources = container(spec, "vllm")["resources"]
        requested = _bytes(resources["requests"]["ephemeral-storage"])
        assert requested >= size
        assert _bytes(resources["limits"]["ephemeral-storage"]) >= requested


def test_replicas_of_a_variant_spread_over_nodes(overlay: str) -> None:
    objs = render_overlay(overlay)
    for deployment, template in pod_templates(objs):
        labels = template["metadata"]["labels"]
        (by_node,) = [
            c
            for c in template["spec"]["topologySpreadConstraints"]
            if c["topologyKey"] == "kubernetes.io/hostname"
        ]
        assert by_node["whenUnsatisfiable"] == "ScheduleAnyway"  # never blocks a small pool
        # It counts this workload's pods, not every vLLM pod (or it would spread variants).
        selector = by_node["labelSelector"]["matchLabels"]
        assert selector == deployment["spec"]["selector"]["matchLabels"]
        assert labels_match(selector, labels)


def _rename_namespace(deploy: Path, overlay: str, namespace: str) -> list[Obj]:
    def change(data: Obj) -> None:
        data["namespace"] = namespace

    edit_yaml(deploy / "overlays" / overlay / "kustomization.yaml", change)
    return render(deploy / "overlays" / overlay)


def test_renaming_the_namespace_keeps_everything_in_it(overlay: str, tmp_path: Path) -> None:
    """The discovery config named namespace quantroute: renamed, the watch got 403."""
    objs = _rename_namespace(copy_deploy(tmp_path), overlay, "ml-serving")
    assert [o["metadata"]["name"] for o in find(objs, "Namespace")] == ["ml-serving"]
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"ml-serving"}
    for binding in find(objs, "RoleBinding"):
        assert {s["namespace"] for s in binding["subjects"]} == {"ml-serving"}
    assert "quantroute.svc" not in gateway_config_text(objs)
    config = _config(objs, tmp_path)
    if config.discovery is not None and config.discovery.kubernetes is not None:
        assert config.discovery.kubernetes.namespace is None  # the pod's own (POD_NAMESPACE)
    for backend in config.backends:  # short names: resolved in the pod's own namespace
        assert "." not in backend.url.removeprefix("http://").split(":")[0]


def test_every_workload_carries_the_version_it_runs(overlay: str) -> None:
    """app.kubernetes.io/version on the objects and pods: the tag of the image they run."""
    objs = render_overlay(overlay)
    for deployment, template in pod_templates(objs):
        main = template["spec"]["containers"][0]
        tag = main["image"].rsplit(":", 1)[1]
        assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == tag
        assert template["metadata"]["labels"]["app.kubernetes.io/version"] == tag
        assert "app.kubernetes.io/version" not in deployment["spec"]["selector"]["matchLabels"]
    gateway = one(objs, "Deployment", "quantroute-gateway")
    assert gateway["metadata"]["labels"]["app.kubernetes.io/version"] == __version__


# -- a way in, the hot-reloaded matrix ------------------------------------------------------


def test_the_routes_in_expose_only_the_api_and_let_streams_run(tmp_path: Path) -> None:
    objs = render(with_components(copy_deploy(tmp_path), "default", ("ingress", "gateway-api")))
    config = _config(objs, tmp_path)
    longest = config.policy.upstream_timeouts.total_s
    service = one(objs, "Service", "quantroute-gateway")
    # the API port; the metrics port (components/access) stays inside the cluster
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    ingress = one(objs, "Ingress", "quantroute-gateway")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1", "Prefix")
    assert path["backend"]["service"] == {
        "name": "quantroute-gateway",
        "port": {"name": port["name"]},
    }
    notes = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= longest
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    route = one(objs, "HTTPRoute", "quantroute-gateway")
    (http,) = route["spec"]["rules"]
    assert http["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert http["backendRefs"] == [{"name": "quantroute-gateway", "port": port["port"]}]
    assert _duration_s(http["timeouts"]["request"]) >= longest


def _duration_s(text: str) -> float:
    factors = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * factors[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", text))


def test_rotating_the_matrix_changes_only_its_config_map(tmp_path: Path) -> None:
    """A new capability matrix reaches the running gateways without a rollout."""
    deploy = copy_deploy(tmp_path)
    directory = with_components(deploy, "default", ("matrix",))
    before = render(directory)
    matrix = directory / "capability_matrix.json"
    matrix.write_text(matrix.read_text().replace('"partial": false', '"partial": true'))
    after = render(directory)
    assert changed_objects(before, after) == {"ConfigMap/quantroute-matrix"}
    config = _config(after, tmp_path)
    spec = one(after, "Deployment", "quantroute-gateway")["spec"]["template"]["spec"]
    (mount,) = [m for m in container(spec, "gateway")["volumeMounts"] if m["name"] == "matrix"]
    assert "subPath" not in mount  # a subPath mount is never updated by the kubelet
    assert config.matrix_path is not None
    assert config.matrix_path.parent == Path(mount["mountPath"])
    config_map = one(after, "ConfigMap", "quantroute-matrix")
    assert config.matrix_path.name in config_map["data"]
    # The gateway accepts what it will load: check-config validates the matrix too.
    (tmp_path / "matrix").mkdir()
    local = tmp_path / "matrix" / "gateway.yaml"
    (tmp_path / "matrix" / config.matrix_path.name).write_text(
        config_map["data"][config.matrix_path.name]
    )
    local.write_text(gateway_config_text(after).replace(str(config.matrix_path.parent) + "/", ""))
    assert cli_main(["check-config", str(local)]) == 0
