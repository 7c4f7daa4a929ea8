"""Typed configuration: frozen pydantic models and the one loader shared by `serve` and `check-config`.

A bad file raises :class:`~quantroute.errors.ConfigError` whose message names the file, the field
(as a dotted path such as ``backends.1.max_seq_len``) and what is wrong with the value.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from quantroute.access.config import AccessConfig
from quantroute.base import FrozenModel
from quantroute.errors import ConfigError
from quantroute.extras import REDIS_HINT, installed
from quantroute.flow.settings import FlowControlConfig, OnSaturation
from quantroute.resilience.settings import MetricsOutage, ResilienceSettings

TaskType = Literal["coding", "reasoning", "extraction", "chat"]
TASK_TYPES: tuple[TaskType, ...] = ("coding", "reasoning", "extraction", "chat")
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
ApiName = Literal["chat", "completions", "responses", "messages", "embeddings", "score", "rerank"]
"""The client APIs a backend can serve: vLLM's generative runner serves the first four, its
pooling runner (an embedding or reranker model) the last three."""
GENERATIVE_APIS: tuple[ApiName, ...] = ("chat", "completions", "responses", "messages")
POOLING_APIS: tuple[ApiName, ...] = ("embeddings", "score", "rerank")


class Quantization(StrEnum):
    AWQ = "awq"
    GPTQ = "gptq"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    NONE = "none"


class BackendConfig(FrozenModel):
    """One vLLM server (or a Service in front of identical replicas)."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    url: str = Field(pattern=r"^https?://")
    served_model_name: str = Field(min_length=1)
    variant: str = ""
    quantization: Quantization = Quantization.NONE
    max_seq_len: int = Field(gt=0)
    capacity: int = Field(gt=0, description="vLLM --max-num-seqs")
    gpu: str = "unknown"
    gpu_cost_per_hour: float = Field(default=0.0, ge=0.0)
    apis: tuple[ApiName, ...] = Field(default=GENERATIVE_APIS, min_length=1)
    """What it serves: a generative model the default, an embedding model
    ``[embeddings, score, rerank]`` (vLLM ``--runner pooling``)."""

    @property
    def variant_id(self) -> str:
        return self.variant or self.id


class GroupConfig(FrozenModel):
    """A client-facing model name that maps to a set of variants."""

    name: str = Field(min_length=1)
    variants: tuple[str, ...] = Field(min_length=1)
    quality_floor: Fraction = 0.0
    continue_across_variants: bool = False
    """A stream that breaks may be continued on another variant of the group (different weights
    or quantization: the continuation is coherent, not the same model's). Default: the same
    variant's replicas only."""
    on_saturation: OnSaturation | None = None
    """When every backend that meets the floor is saturated: ``queue``, ``downgrade`` (interactive
    requests to the best variant below the floor with room) or ``reject``; None:
    ``policy.flow_control.on_saturation``."""


class PluginRef(FrozenModel):
    """A filter or picker by its registered name, with the plugin's own parameters."""

    name: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: object) -> object:
        return {"name": data} if isinstance(data, str) else data


class ScorerRef(PluginRef):
    """A scorer by its registered name, its weight in the profile, and its parameters."""

    weight: float = Field(default=1.0, ge=0.0)


def _scorers(**weights: float) -> tuple[ScorerRef, ...]:
    return tuple(ScorerRef(name=k, weight=v) for k, v in weights.items())


class ScorerProfiles(FrozenModel):
    """The weighted scorers per latency class (``x-quantroute-priority``)."""

    interactive: tuple[ScorerRef, ...] = _scorers(headroom=0.4, latency=0.45, cost=0.15)
    batch: tuple[ScorerRef, ...] = _scorers(headroom=0.35, latency=0.1, cost=0.55)
    pooling: tuple[ScorerRef, ...] = _scorers(headroom=0.5, least_loaded=0.5)
    """Embeddings, score and rerank: load alone (the matrix describes generation, not them)."""


class ScoreWeights(FrozenModel):
    """The earlier form of one scorer profile: a weight per built-in scorer."""

    headroom: Annotated[float, Field(ge=0.0)] = 0.4
    latency: Annotated[float, Field(ge=0.0)] = 0.4
    cost: Annotated[float, Field(ge=0.0)] = 0.2
    least_loaded: Annotated[float, Field(ge=0.0)] = 0.0

    def as_scorers(self) -> tuple[ScorerRef, ...]:
        """The same profile as scorer references (a weight of 0 meant "not used")."""
        return _scorers(**{k: v for k, v in self.model_dump().items() if v > 0})


class Weights(FrozenModel):
    """The earlier form of ``policy.scorers`` (``policy.weights``), still accepted."""

    interactive: ScoreWeights = ScoreWeights(headroom=0.4, latency=0.45, cost=0.15)
    batch: ScoreWeights = ScoreWeights(headroom=0.35, latency=0.1, cost=0.55)


class UpstreamTimeouts(FrozenModel):
    """Timeouts that fit LLM traffic: a long generation is legitimate, a silent backend is not.

    A stream's response headers must arrive within ``first_byte_s`` (vLLM sends them at once) and
    no gap between two chunks may exceed ``stream_idle_s``. A non-streamed answer arrives whole
    when generation ends, so its deadline grows with what it may generate:
    ``nonstream_base_s + tokens x nonstream_per_token_s`` (tokens: ``max_tokens``, else what the
    context leaves), at most ``total_s``, which also caps a whole stream.
    """

    connect_s: PositiveFloat = 2.0
    first_byte_s: PositiveFloat = 120.0
    stream_idle_s: PositiveFloat = 120.0
    nonstream_base_s: PositiveFloat = 60.0
    nonstream_per_token_s: PositiveFloat = 0.2
    total_s: PositiveFloat = 3600.0


class PrefixConfig(FrozenModel):
    """The gateway's prefix index and session table (used when a policy names the ``prefix``,
    ``session`` or ``cache_aware`` scorer)."""

    block_chars: int = Field(default=256, ge=16)
    """Prompt characters per index block (~64 tokens at 4 characters per token)."""
    max_blocks_per_backend: int = Field(default=65_536, ge=1)
    """Memory bound: index entries per backend (~90 bytes each, ~6 MB per backend), and never
    more than the backend's own KV cache holds."""
    ttl_s: PositiveFloat = 300.0
    """An entry not refreshed for this long counts as evicted on the backend."""
    session_header: str = "x-session-id"
    session_from_body: bool = True
    """Without the header, take the session from the body's ``prompt_cache_key``, else ``user``."""
    max_sessions: int = Field(default=20_000, ge=1)
    session_ttl_s: PositiveFloat = 600.0


DEFAULT_FILTERS = ("context", "kv_ceiling", "kv_pressure", "quality")
QualityFallback = Literal["reject", "best_available"]


class PolicyConfig(FrozenModel):
    kv_pressure_threshold: Fraction = 0.85
    kv_hard_ceiling: Fraction = 0.95
    filters: tuple[PluginRef, ...] = tuple(PluginRef(name=n) for n in DEFAULT_FILTERS)
    """Filters by registered name (``health`` always runs first); a plain name is short for
    ``{name: ...}``."""
    scorers: ScorerProfiles = ScorerProfiles()
    weights: Weights | None = Field(default=None, exclude=True)
    """The earlier form of ``scorers``: accepted and turned into ``scorers``."""
    picker: PluginRef = PluginRef(name="best")
    quality_fallback: QualityFallback = "reject"
    """best_available: when only the quality floor stands between a request and every backend
    that fits it, serve it anyway (the decision says the floor was relaxed) instead of a 503."""
    tie_tolerance: Fraction = 0.03
    staleness_limit_s: PositiveFloat = 5.0
    scrape_interval_s: PositiveFloat = 1.0
    scrape_timeout_s: PositiveFloat = 2.0
    down_after_failures: int = Field(default=3, ge=1)
    upstream_timeouts: UpstreamTimeouts = UpstreamTimeouts()
    retries: int = Field(default=1, ge=0, le=5)
    chars_per_token: PositiveFloat = 4.0
    default_max_tokens: int = Field(default=256, gt=0)
    latency_reference_ms: PositiveFloat = 500.0
    default_ttft_ms: PositiveFloat = 200.0
    default_prefill_tokens_per_s: PositiveFloat = 5000.0
    """Used by the latency estimate when the matrix has no measured prefill rate."""
    measured_latency: bool = True
    """Blend the TTFT and time per token the gateway measures per backend into the latency
    estimate (off: the matrix prior scaled by load alone)."""
    latency_prior_samples: PositiveFloat = 5.0
    """How many observations the matrix prior is worth: the measurement's weight is
    n / (n + latency_prior_samples), n the (decayed) count of samples."""
    latency_half_life_s: PositiveFloat = 120.0
    """Without new samples, the measurement's weight halves every this many seconds (a replica
    measured slow, then sent nothing, is tried again in time)."""
    latency_decode_tokens: int = Field(default=0, ge=0)
    """Output tokens whose expected time (blended time per token) the latency scorer adds to the
    expected TTFT; 0 scores on TTFT alone."""
    retry_after_s: int = Field(default=1, ge=1)
    metrics_outage: MetricsOutage = "fail_open"
    """When no backend a request could go to has fresh metrics: ``fail_open`` routes on the
    gateway's own account with an even spread (passive health still keeps dead backends out),
    ``fail_closed`` answers 503 with Retry-After."""
    seed: int = 0
    prefix: PrefixConfig = PrefixConfig()
    flow_control: FlowControlConfig = FlowControlConfig()
    """The gateway-side queue for saturated groups (:mod:`quantroute.flow`)."""

    @model_validator(mode="after")
    def _ceiling_above_threshold(self) -> PolicyConfig:
        if self.kv_hard_ceiling < self.kv_pressure_threshold:
            raise ValueError("kv_hard_ceiling must be >= kv_pressure_threshold")
        return self

    @model_validator(mode="after")
    def _weights_to_scorers(self) -> PolicyConfig:
        if self.weights is None:
            return self
        if "scorers" in self.model_fields_set:
            raise ValueError(
                "give policy.scorers or its earlier form policy.weights, not both "
                "(weights: {interactive: {latency: 0.5}} is scorers: {interactive: "
                "[{name: latency, weight: 0.5}, ...]})"
            )
        profiles = ScorerProfiles(
            interactive=self.weights.interactive.as_scorers(),
            batch=self.weights.batch.as_scorers(),
        )
        object.__setattr__(self, "scorers", profiles)  # frozen: set once, during validation
        object.__setattr__(self, "weights", None)
        return self


class ListenConfig(FrozenModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class KubernetesDiscoveryConfig(FrozenModel):
    """Backends from pods selected by a label, their settings from labels and annotations."""

    namespace: str | None = None
    """Where the vLLM pods run; default: the gateway pod's own namespace (``POD_NAMESPACE``, else
    the service account's namespace file), outside a cluster ``default``."""
    label_selector: str = "quantroute.io/role=backend"
    port: int | None = Field(default=None, ge=1, le=65535)
    """Container port of vLLM; default: the annotation ``quantroute.io/port``, else 8000."""
    scheme: Literal["http", "https"] = "http"
    kubeconfig: str | None = None
    """Path to a kubeconfig; default: in-cluster service account, else ~/.kube/config."""
    api_url: str | None = None
    """Talk to this API server URL directly (no auth); for tests and ``kubectl proxy``."""
    resync_s: PositiveFloat = 300.0


class DnsDiscoveryConfig(FrozenModel):
    """Strict DNS: each static backend's URL host is resolved again and again; every address it
    resolves to (a headless Service's Ready pods) is one backend with that backend's settings."""

    backends: tuple[str, ...] | None = None
    """Ids of the static backends to resolve; default: every one whose URL host is a name."""
    interval_s: PositiveFloat = 5.0
    timeout_s: PositiveFloat = 2.0
    nameservers: tuple[str, ...] = ()
    """Resolver IP addresses; default: the system's (/etc/resolv.conf, with its search list)."""
    port: int = Field(default=53, ge=1, le=65535)
    """Port of ``nameservers`` (ignored with the system's resolver)."""
    record_type: Literal["A", "AAAA"] = "A"


class ContinuationConfig(FrozenModel):
    """Streams that survive a backend failure: the generation continues on another backend."""

    enabled: bool = True
    max_per_request: int = Field(default=1, ge=0, le=3)
    """Continuations one stream may use (0 disables them like ``enabled: false``)."""
    max_prefix_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """A stream that relayed more than this is not continued (the relayed events are kept in
    memory to rebuild the prefix)."""


class DecisionLogConfig(FrozenModel):
    """The decision log: one JSON line per settled request, features and outcome only (never the
    prompt), for ``quantroute tune`` to replay (:mod:`quantroute.decisionlog`)."""

    path: Path
    """The JSONL file; rotated copies are ``<path>.1`` .. ``<path>.<backups>``."""
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
    """Size at which the file is rotated."""
    backups: int = Field(default=5, ge=0, le=100)
    """Rotated files kept (0: the file is truncated when it reaches ``max_bytes``)."""
    queue_size: int = Field(default=10_000, ge=1)
    """Records waiting for the writer thread; beyond it records are dropped and counted
    (a stalled disk never blocks a request)."""


class DiscoveryConfig(FrozenModel):
    kubernetes: KubernetesDiscoveryConfig | None = None
    dns: DnsDiscoveryConfig | None = None


class ConversationsConfig(FrozenModel):
    """The Responses API's stored responses (``previous_response_id``, retrieve, delete)."""

    ttl_s: PositiveFloat = 3600.0
    """A stored response is forgotten this long after it was last written or continued."""
    max_entries: int = Field(default=10_000, gt=0)
    """In memory: least recently used responses beyond this are forgotten."""
    redis_url: str | None = Field(default=None, pattern=r"^(redis|rediss|unix)://")
    """Share them between gateway replicas in this Redis (``pip install quantroute[redis]``)."""
    redis_prefix: str = "quantroute:response:"
    redis_timeout_s: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _redis_client_installed(self) -> ConversationsConfig:
        if self.redis_url is not None and not installed("redis"):
            raise ValueError(f"redis_url needs the Redis client, not installed: {REDIS_HINT}")
        return self


class TracingConfig(FrozenModel):
    """OpenTelemetry tracing (needs ``pip install 'quantroute[tracing]'``). Unset fields fall back
    to the standard ``OTEL_*`` environment variables, which the OpenTelemetry SDK reads."""

    enabled: bool | None = None
    """None (default): on exactly when an OTLP endpoint is given, here or in
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT. OTEL_SDK_DISABLED=true
    turns it off whatever this says."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://")
    """Full OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces."""
    service_name: str | None = None
    """Default: OTEL_SERVICE_NAME, else "quantroute"."""
    sample_ratio: Fraction | None = None
    """Parent-based trace-id ratio sampling; default: OTEL_TRACES_SAMPLER (+ _ARG), else every
    trace (parentbased_always_on)."""


class AccessLogConfig(FrozenModel):
    """One JSON line per request: the request's features, the decision, each upstream attempt,
    status, tokens and timings. ``path: "-"`` writes to stdout (for the cluster's collector)."""

    path: str = Field(default="-", min_length=1)
    max_bytes: int = Field(default=100 * 2**20, ge=0)
    """Rotate the file at this size (0: never); ignored for stdout."""
    backup_count: int = Field(default=5, ge=0)
    """Rotated files kept (access.log.1 ... .N)."""
    queue_size: int = Field(default=10_000, gt=0)
    """Records waiting for the writer thread; beyond it records are dropped and counted
    (quantroute_access_log_dropped_total), never blocking a request."""


class GatewayConfig(FrozenModel):
    listen: ListenConfig = ListenConfig()
    matrix_path: Path | None = None
    backends: tuple[BackendConfig, ...] = ()
    groups: tuple[GroupConfig, ...] = ()
    continuation: ContinuationConfig = ContinuationConfig()
    policy: PolicyConfig = PolicyConfig()
    discovery: DiscoveryConfig | None = None
    conversations: ConversationsConfig = ConversationsConfig()
    resilience: ResilienceSettings = ResilienceSettings()
    log_decisions: bool = False
    decision_log: DecisionLogConfig | None = None
    """Off unless set: what the router saw and did per request, for ``quantroute tune``."""
    access: AccessConfig = AccessConfig()
    tracing: TracingConfig = TracingConfig()
    access_log: AccessLogConfig | None = None
    """None (default): no access log."""

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        ids = [b.id for b in self.backends]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate backend id(s): {', '.join(dup)}")
        known = {b.variant_id for b in self.backends}
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError("duplicate group names")
        discovered = self.discovery is not None and self.discovery.kubernetes is not None
        for group in self.groups if not discovered else ():
            missing = [v for v in group.variants if v not in known]
            if missing:
                raise ValueError(
                    f"group {group.name!r} names unknown variant(s) {missing}; known: {sorted(known)}"
                )
        return self

    @model_validator(mode="after")
    def _dns_backends_known(self) -> GatewayConfig:
        dns = self.discovery.dns if self.discovery is not None else None
        if dns is not None and dns.backends is not None:
            unknown = sorted(set(dns.backends) - {b.id for b in self.backends})
            if unknown:
                raise ValueError(f"discovery.dns.backends names unknown backend id(s): {unknown}")
        return self

    def backend(self, backend_id: str) -> BackendConfig:
        for b in self.backends:
            if b.id == backend_id:
                return b
        raise KeyError(backend_id)


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
        lines.append(f"  - {where}: {err['msg']} (got {shown[:80]})")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>") -> GatewayConfig:
    """Validate ``data``; plugin names and parameters are checked against the registry too."""
    try:
        config = GatewayConfig.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    from quantroute.core.plugins import compile_plan  # the registry lives in the core

    try:
        compile_plan(config.policy)
    except ConfigError as exc:
        raise ConfigError(f"{source}: invalid configuration (1 problem(s))\n  - {exc}") from None
    return config


def load_config(path: str | Path) -> GatewayConfig:
    """Read, parse and validate a gateway YAML file; relative matrix paths resolve beside it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    config = parse_config(data, str(path))
    if config.matrix_path is not None and not config.matrix_path.is_absolute():
        config = config.model_copy(update={"matrix_path": path.parent / config.matrix_path})
    log = config.decision_log
    if log is not None and not log.path.is_absolute():
        log = log.model_copy(update={"path": path.parent / log.path})
        config = config.model_copy(update={"decision_log": log})
    return config
