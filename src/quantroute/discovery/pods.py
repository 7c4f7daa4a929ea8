"""Pure: one pod's JSON → whether it serves, and the :class:`BackendConfig` its labels describe.

The contract a vLLM pod template follows (docs/discovery.md):

=====================================  ==========  ========  =================================
key                                    kind        required  default / meaning
=====================================  ==========  ========  =================================
``quantroute.io/variant``              label       yes       the variant id groups refer to
``quantroute.io/served-model-name``    annotation  yes       vLLM ``--served-model-name``
``quantroute.io/max-model-len``        annotation  yes       vLLM ``--max-model-len``
``quantroute.io/max-num-seqs``         annotation  yes       vLLM ``--max-num-seqs`` (capacity)
``quantroute.io/quantization``         annotation  no        ``none``; awq, gptq, fp8, ...
``quantroute.io/gpu``                  annotation  no        ``unknown``
``quantroute.io/gpu-cost-per-hour``    annotation  no        ``0``
``quantroute.io/port``                 annotation  no        ``discovery.kubernetes.port``, 8000
``quantroute.io/apis``                 annotation  no        the generative APIs; an embedding
                                                             model: ``embeddings,score,rerank``
=====================================  ==========  ========  =================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from quantroute.config import BackendConfig, KubernetesDiscoveryConfig

PREFIX = "quantroute.io/"
VARIANT_LABEL = PREFIX + "variant"
SERVED_MODEL_NAME = PREFIX + "served-model-name"
MAX_MODEL_LEN = PREFIX + "max-model-len"
MAX_NUM_SEQS = PREFIX + "max-num-seqs"
QUANTIZATION = PREFIX + "quantization"
GPU = PREFIX + "gpu"
GPU_COST_PER_HOUR = PREFIX + "gpu-cost-per-hour"
PORT = PREFIX + "port"
APIS = PREFIX + "apis"
DEFAULT_PORT = 8000

REQUIRED_ANNOTATIONS = (SERVED_MODEL_NAME, MAX_MODEL_LEN, MAX_NUM_SEQS)
_FIELDS = {  # BackendConfig field -> annotation that sets it
    "served_model_name": SERVED_MODEL_NAME,
    "max_seq_len": MAX_MODEL_LEN,
    "capacity": MAX_NUM_SEQS,
    "quantization": QUANTIZATION,
    "gpu": GPU,
    "gpu_cost_per_hour": GPU_COST_PER_HOUR,
}
# vLLM --quantization methods and dtypes that name one of quantroute's quantization kinds.
_QUANTIZATION_ALIASES = {
    "awq_marlin": "awq",
    "gptq_marlin": "gptq",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}


@dataclass(frozen=True)
class PodView:
    """What discovery keeps of one pod."""

    name: str
    serving: bool
    """Running, has an IP, Ready=True and not being deleted."""
    backend: BackendConfig | None
    problem: str | None = None
    """Why ``backend`` is None: a label or annotation missing or invalid."""


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: object) -> dict[str, str]:
    return {str(k): v for k, v in _mapping(value).items() if isinstance(v, str)}


def is_serving(pod: Mapping[str, object]) -> bool:
    """Running, with a pod IP, condition Ready=True, and no deletionTimestamp."""
    metadata = _mapping(pod.get("metadata"))
    status = _mapping(pod.get("status"))
    conditions = status.get("conditions")
    ready = isinstance(conditions, list) and any(
        _mapping(c).get("type") == "Ready" and _mapping(c).get("status") == "True"
        for c in conditions
    )
    return (
        status.get("phase") == "Running"
        and bool(status.get("podIP"))
        and ready
        and not metadata.get("deletionTimestamp")
    )


def _url(scheme: str, ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{scheme}://{host}:{port}"


def _port(annotations: Mapping[str, str], cfg: KubernetesDiscoveryConfig) -> int:
    if cfg.port is not None:
        return cfg.port
    raw = annotations.get(PORT)
    if raw is None:
        return DEFAULT_PORT
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"annotation {PORT}={raw!r} is not a port number")
    return int(raw)


def _describe(exc: ValidationError, annotations: Mapping[str, str]) -> str:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    key = APIS if field == "apis" else _FIELDS.get(field)
    if key is None:
        return f"{field}: {err['msg']}"
    return f"annotation {key}={annotations.get(key)!r}: {err['msg']}"


def backend_of(
    name: str, pod: Mapping[str, object], cfg: KubernetesDiscoveryConfig
) -> BackendConfig:
    """The backend a pod's labels and annotations describe; ``ValueError`` names what is wrong."""
    metadata = _mapping(pod.get("metadata"))
    labels = _strings(metadata.get("labels"))
    annotations = _strings(metadata.get("annotations"))
    missing = [f"label {VARIANT_LABEL}"] if not labels.get(VARIANT_LABEL) else []
    missing += [f"annotation {k}" for k in REQUIRED_ANNOTATIONS if not annotations.get(k)]
    if missing:
        raise ValueError("missing " + ", ".join(missing))
    fields: dict[str, object] = {
        field: annotations[key] for field, key in _FIELDS.items() if key in annotations
    }
    if "quantization" in fields:
        quantization = str(fields["quantization"]).lower()
        fields["quantization"] = _QUANTIZATION_ALIASES.get(quantization, quantization)
    if APIS in annotations:
        fields["apis"] = [a.strip() for a in annotations[APIS].split(",") if a.strip()]
    ip = str(_mapping(pod.get("status")).get("podIP") or "0.0.0.0")
    fields.update(
        id=name, variant=labels[VARIANT_LABEL], url=_url(cfg.scheme, ip, _port(annotations, cfg))
    )
    try:
        return BackendConfig.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(_describe(exc, annotations)) from None


def pod_name(pod: Mapping[str, object]) -> str:
    return str(_mapping(pod.get("metadata")).get("name") or "")


def read_pod(pod: Mapping[str, object], cfg: KubernetesDiscoveryConfig) -> PodView:
    name = pod_name(pod)
    serving = is_serving(pod)
    try:
        return PodView(name, serving, backend_of(name, pod, cfg))
    except ValueError as exc:
        return PodView(name, serving, None, str(exc))
