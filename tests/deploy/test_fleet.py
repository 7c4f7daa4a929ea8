"""The rendered fleets hang together: gateway config, vLLM arguments, Services, HPAs, the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantroute.cli import main as cli_main
from quantroute.config import GatewayConfig, load_config
from quantroute.discovery.strict_dns import templates
from quantroute.preflight import check_vllm_args, parse_vllm_args

from .helpers import (
    GPU_POOLS,
    OVERLAYS,
    STATIC_OVERLAYS,
    Obj,
    adapter_rules,
    container,
    find,
    gateway_config_text,
    labels_match,
    one,
    render_overlay,
    vllm_deployments,
)

PREFLIGHT_PREFIX = ["check-vllm-args", "--fail-on", "error", "--"]


@pytest.fixture(params=STATIC_OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _gateway_config(objs: list[Obj], tmp_path: Path) -> tuple[GatewayConfig, Path]:
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(objs))
    return load_config(path), path


def _vllm_args(deployment: Obj) -> list[str]:
    args: list[str] = container(deployment["spec"]["template"]["spec"], "vllm")["args"]
    return args


def test_embedded_gateway_config_passes_check_config(
    overlay: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = render_overlay(overlay)
    config, path = _gateway_config(objs, tmp_path)
    assert cli_main(["check-config", str(path)]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    # It says which backends are resolved, and which names: what an operator checks first.
    assert summary.startswith("# strict DNS every 5 s, one backend per address: ")
    for backend in config.backends:
        assert f"{backend.id} (vllm-headless-{backend.variant_id})" in summary


def test_every_backend_resolves_each_pod_of_its_variant(overlay: str, tmp_path: Path) -> None:
    """Strict DNS over a headless Service: one backend per Ready pod, every replica routed to."""
    objs = render_overlay(overlay)
    config, _ = _gateway_config(objs, tmp_path)
    assert config.discovery is not None and config.discovery.dns is not None
    assert templates(config) == list(config.backends)
    by_model = {parse_vllm_args(_vllm_args(d)).names[0]: d for d in vllm_deployments(objs)}
    assert len(by_model) == len(config.backends) == len(vllm_deployments(objs))
    for backend in config.backends:
        host, port = backend.url.removeprefix("http://").split(":")
        assert "." not in host  # resolved through the pod's search list: its own namespace
        service = one(objs, "Service", host)
        assert service["spec"]["clusterIP"] == "None"
        assert not service["spec"].get("publishNotReadyAddresses", False)
        assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
        deployment = by_model[backend.served_model_name]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        # Exactly this variant's pods: a selector that also matched another variant's pods
        # would give this backend's settings to servers of another model.
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for other in vllm_deployments(objs):
            if other is not deployment:
                other_labels = other["spec"]["template"]["metadata"]["labels"]
                assert not service["spec"]["selector"].items() <= other_labels.items()
        (http,) = container(deployment["spec"]["template"]["spec"], "vllm")["ports"]
        assert service["spec"]["ports"][0]["targetPort"] in (http["name"], http["containerPort"])
        assert pod_labels["quantroute.io/variant"] == backend.variant_id
        options = parse_vllm_args(_vllm_args(deployment)).options
        assert int(options["--max-num-seqs"]) == backend.capacity
        pool = deployment["spec"]["template"]["spec"]["nodeSelector"]
        assert pool == {"nvidia.com/gpu.product": GPU_POOLS[backend.gpu]}


def test_vllm_arguments_pass_the_preflight_check(overlay: str, tmp_path: Path) -> None:
    objs = render_overlay(overlay)
    config, _ = _gateway_config(objs, tmp_path)
    for deployment in vllm_deployments(objs):
        args = parse_vllm_args(_vllm_args(deployment))
        assert args.options["--dtype"] == "float16"
        assert args.options["--quantization"] in ("awq_marlin", "gptq_marlin")
        assert args.options["--gpu-memory-utilization"] == "0.90"
        assert "--max-model-len" in args.options
        assert check_vllm_args(args, config) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_preflight_init_container_checks_the_same_arguments(overlay: str) -> None:
    objs = render_overlay(overlay)
    gateway = one(objs, "Deployment", "quantroute-gateway")["spec"]["template"]["spec"]
    for deployment in vllm_deployments(objs):
        spec = deployment["spec"]["template"]["spec"]
        init = container(spec, "preflight", init=True)
        assert init["command"] == ["quantroute"]
        assert init["args"] == [*PREFLIGHT_PREFIX, *_vllm_args(deployment)]
        # The shipped overlays pin the preflight to the gateway's release (two image entries).
        assert init["image"] == container(gateway, "gateway")["image"]
        mounted = {
            m["name"]
            for c in [*spec["initContainers"], *spec["containers"]]
            for m in c.get("volumeMounts", [])
        }
        assert mounted <= {v["name"] for v in spec["volumes"]}
        # What the init container runs, through the real command line, exits 0.
        assert cli_main(init["args"]) == 0


def test_vllm_arguments_agree_with_the_gateway_config_before_apply(
    overlay: str, tmp_path: Path
) -> None:
    """The cross-check the preflight no longer makes in the cluster: run before `kubectl apply`
    (deploy/README.md, "Change the gateway config"), here for the shipped overlays."""
    objs = render_overlay(overlay)
    _, path = _gateway_config(objs, tmp_path)
    for deployment in vllm_deployments(objs):
        argv = ["check-vllm-args", "--gateway-config", str(path), "--", *_vllm_args(deployment)]
        assert cli_main(argv) == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_pods_are_scraped_and_protected(overlay: str) -> None:
    objs = render_overlay(overlay)
    (monitor,) = find(objs, "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for deployment in vllm_deployments(objs):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        assert labels_match(
            monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]
        )
        ports = {p["name"] for p in container(template["spec"], "vllm")["ports"]}
        assert (endpoint["port"], endpoint["path"]) in {(p, "/metrics") for p in ports}
        image = container(template["spec"], "vllm")["image"]
        assert image.startswith("vllm/vllm-openai:v") and not image.endswith(":latest")
        pdb = one(objs, "PodDisruptionBudget", name)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert (
            pdb["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        )
        assert (
            pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        )


def _renamed_metrics() -> dict[str, str]:
    """Custom metric name served by prometheus-adapter -> the Prometheus series it reads."""
    out = {}
    for rule in adapter_rules():
        series = rule["seriesQuery"].split("{")[0]
        assert rule["name"]["matches"] == f"^{series}$"
        out[rule["name"]["as"]] = series
    return out


def test_adapter_rules_rename_to_legal_custom_metric_names() -> None:
    renamed = _renamed_metrics()
    assert renamed["vllm_num_requests_running"] == "vllm:num_requests_running"
    for name, rule in zip(renamed, adapter_rules(), strict=True):
        assert ":" not in name
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]


def test_default_fleet_autoscales_each_variant_on_running_requests() -> None:
    objs = render_overlay("default")
    for deployment in vllm_deployments(objs):
        name = deployment["metadata"]["name"]
        hpa = one(objs, "HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "vllm_num_requests_running"
        assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "120"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_hpa_custom_metric_is_served_by_the_adapter(overlay: str) -> None:
    served = _renamed_metrics()
    for hpa in find(render_overlay(overlay), "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_deployment(overlay: str, tmp_path: Path) -> None:
    objs = render_overlay(overlay)
    config, _ = _gateway_config(objs, tmp_path)
    deployment = one(objs, "Deployment", "quantroute-gateway")
    spec = deployment["spec"]["template"]["spec"]
    gateway = container(spec, "gateway")
    assert "replicas" not in deployment["spec"]  # the HPA's
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports["http"] == 8080
    # /metrics on its own port when the config says so (components/access), else on the API port
    metrics_port = config.access.metrics_port or 8080
    metrics_name = next(name for name, port in ports.items() if port == metrics_port)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert {"cpu", "memory"} <= gateway["resources"]["requests"].keys()
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    config_path = Path(env["QUANTROUTE_CONFIG"])
    mount = next(m for m in gateway["volumeMounts"] if Path(m["mountPath"]) == config_path.parent)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = one(objs, "ConfigMap", volume["configMap"]["name"])
    assert config_path.name in config_map["data"]
    # Streams drain: the grace period covers the preStop pause, the gateway's drain announcement
    # and its drain deadline for the requests in progress.
    pause = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = config.resilience.drain
    assert spec["terminationGracePeriodSeconds"] >= pause + drain.announce_s + drain.deadline_s
    hpa = one(objs, "HorizontalPodAutoscaler", "quantroute-gateway")
    assert hpa["spec"]["minReplicas"] == 2
    pods = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == ["quantroute_in_flight_requests"]
    service = one(objs, "Service", "quantroute-gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(objs, "ServiceMonitor", "quantroute-gateway")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    scraped = by_name[monitor["spec"]["endpoints"][0]["port"]]
    assert scraped["targetPort"] == metrics_name


def test_default_fleet_runs_three_variants_on_two_gpu_pools() -> None:
    objs = render_overlay("default")
    pools = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["nodeSelector"][
            "nvidia.com/gpu.product"
        ]
        for d in vllm_deployments(objs)
    }
    assert pools == {
        "vllm-llama3-8b-awq": "NVIDIA-L40S",
        "vllm-qwen25-7b-gptq": "NVIDIA-L40S",
        "vllm-llama3-70b-awq": "NVIDIA-H100-80GB-HBM3",
    }
    llama = parse_vllm_args(_vllm_args(one(objs, "Deployment", "vllm-llama3-8b-awq")))
    assert llama.options["--max-model-len"] == "8192"


def test_small_fleet_is_one_l40s_without_vllm_autoscaling() -> None:
    objs = render_overlay("small")
    (deployment,) = vllm_deployments(objs)
    assert deployment["metadata"]["name"] == "vllm-llama3-8b-awq"
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L40S"}
    limits = container(spec["template"]["spec"], "vllm")["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert [h["metadata"]["name"] for h in find(objs, "HorizontalPodAutoscaler")] == [
        "quantroute-gateway"
    ]
