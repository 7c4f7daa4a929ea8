"""Pure: which pods serve, and what backend a pod's labels and annotations describe."""

from __future__ import annotations

from typing import Any

import pytest

from quantroute.config import KubernetesDiscoveryConfig, Quantization
from quantroute.discovery.pods import backend_of, is_serving, read_pod

from .fake_kube import vllm_pod

CFG = KubernetesDiscoveryConfig()


@pytest.mark.parametrize(
    ("pod", "serving"),
    [
        (vllm_pod("p", port=8000), True),
        (vllm_pod("p", port=8000, ready=False), False),
        (vllm_pod("p", port=8000, phase="Pending", ip=None, ready=False), False),
        (vllm_pod("p", port=8000, ip=None), False),
        (vllm_pod("p", port=8000, phase="Succeeded"), False),
        (vllm_pod("p", port=8000, deleting=True), False),
        ({"metadata": {"name": "p"}}, False),
        ({"metadata": {"name": "p"}, "status": {"phase": "Running", "conditions": "x"}}, False),
    ],
    ids=["ready", "not-ready", "pending", "no-ip", "finished", "terminating", "no-status", "junk"],
)
def test_only_running_ready_pods_with_an_ip_serve(pod: dict[str, Any], serving: bool) -> None:
    assert is_serving(pod) is serving


def test_backend_from_labels_and_annotations() -> None:
    backend = backend_of("vllm-a-7d9", vllm_pod("vllm-a-7d9", port=8123, ip="10.1.2.3"), CFG)
    assert backend.id == "vllm-a-7d9" and backend.url == "http://10.1.2.3:8123"
    assert (backend.variant, backend.served_model_name) == ("llama3-8b-awq", "model-a")
    assert (backend.max_seq_len, backend.capacity) == (8192, 16)
    assert backend.quantization is Quantization.AWQ  # vLLM's awq_marlin names the AWQ kind
    assert (backend.gpu, backend.gpu_cost_per_hour) == ("L40S", 1.2)


def test_an_embedding_pod_declares_the_apis_it_serves() -> None:
    pod = vllm_pod("emb", port=8000, annotations={"quantroute.io/apis": "embeddings, score,rerank"})
    assert backend_of("emb", pod, CFG).apis == ("embeddings", "score", "rerank")


def test_defaults_for_optional_annotations_and_config_port_and_scheme() -> None:
    optional = (
        "quantroute.io/quantization",
        "quantroute.io/gpu",
        "quantroute.io/gpu-cost-per-hour",
    )
    pod = vllm_pod("p", port=9999, ip="fd00::7", without=(*optional, "quantroute.io/port"))
    backend = backend_of("p", pod, CFG)
    assert backend.url == "http://[fd00::7]:8000"
    assert (backend.quantization, backend.gpu, backend.gpu_cost_per_hour) == (
        Quantization.NONE,
        "unknown",
        0.0,
    )
    assert backend.apis == ("chat", "completions", "responses", "messages")
    fixed = KubernetesDiscoveryConfig(port=7000, scheme="https")
    assert backend_of("p", vllm_pod("p", port=9999), fixed).url == "https://127.0.0.1:7000"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"without": ("quantroute.io/variant",)}, "missing label quantroute.io/variant"),
        (
            {"without": ("quantroute.io/max-model-len", "quantroute.io/served-model-name")},
            "missing annotation quantroute.io/served-model-name, annotation quantroute.io/max-model-len",
        ),
        (
            {"annotations": {"quantroute.io/max-num-seqs": "lots"}},
            "quantroute.io/max-num-seqs='lots'",
        ),
        ({"annotations": {"quantroute.io/max-model-len": "0"}}, "quantroute.io/max-model-len='0'"),
        (
            {"annotations": {"quantroute.io/quantization": "int3"}},
            "quantroute.io/quantization='int3'",
        ),
        ({"annotations": {"quantroute.io/gpu-cost-per-hour": "-1"}}, "gpu-cost-per-hour='-1'"),
        ({"annotations": {"quantroute.io/port": "http"}}, "quantroute.io/port='http'"),
        ({"annotations": {"quantroute.io/apis": "embeddings,chit-chat"}}, "quantroute.io/apis="),
        ({"annotations": {"quantroute.io/port": "70000"}}, "quantroute.io/port='70000'"),
    ],
)
def test_a_pod_with_a_missing_or_bad_key_is_skipped_naming_the_key(
    change: dict[str, Any], problem: str
) -> None:
    view = read_pod(vllm_pod("bad-pod", port=8000, **change), CFG)
    assert view.backend is None and view.serving
    assert view.problem is not None and problem in view.problem
