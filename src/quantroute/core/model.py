"""Immutable values the routing core works on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from quantroute.base import quick_init
from quantroute.config import ApiName, BackendConfig, TaskType
from quantroute.core.latency import LatencyEstimate, ObservedLatency, TtftFit
from quantroute.core.prefix import PrefixView, PromptBlocks


class Health(StrEnum):
    FRESH = "fresh"
    STALE = "stale"
    DOWN = "down"
    UNKNOWN = "unknown"


class LatencyClass(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class BackendMetrics:
    """What a backend's /metrics said. ``None`` means unknown, never zero."""

    kv_cache_usage: float | None = None
    num_running: float | None = None
    num_waiting: float | None = None
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    model_names: tuple[str, ...] = ()
    kv_metric_name: str | None = None
    prefix_cache_queries: float | None = None
    """``vllm:prefix_cache_queries_total`` (tokens looked up in the prefix cache, cumulative)."""
    prefix_cache_hits: float | None = None
    """``vllm:prefix_cache_hits_total`` (of those, tokens found cached)."""

    @property
    def prefix_hit_rate(self) -> float | None:
        """The backend's own prefix-cache hit rate since it started (None: unknown or idle)."""
        if not self.prefix_cache_queries or self.prefix_cache_hits is None:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries

    @property
    def kv_capacity_tokens(self) -> int | None:
        if self.num_gpu_blocks is None or self.block_size is None:
            return None
        return self.num_gpu_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class PassiveState:
    """What the gateway's own request outcomes say about a backend (passive health)."""

    ejected: str | None = None
    """Why the backend is ejected (reason: detail), or None when it is not."""
    weight: float = 1.0
    """Slow-start weight in (0, 1] after an ejection or an outage: its share ramps up."""
    backpressure: bool = False
    """It answered 429/503 a moment ago: steer away while others can take the request."""
    suspect: bool = False
    """It failed a moment ago (its failure streak is building): prefer others meanwhile."""


SERVING = PassiveState()


@quick_init
@dataclass(frozen=True, slots=True)
class BackendState:
    """One backend as the router sees it at snapshot time."""

    config: BackendConfig
    health: Health
    metrics: BackendMetrics | None = None
    pending_requests: int = 0
    pending_kv_tokens: int = 0
    prefill_backlog_tokens: int = 0
    """Prompt tokens of requests this gateway sent that have not yet produced a first byte:
    prefill work queued on the backend that no vLLM gauge shows (a 30k-token prompt is one
    "running" request and a few percent of KV, but seconds of prefill ahead of anything new)."""
    passive: PassiveState = SERVING
    observed: ObservedLatency | None = None
    """What the gateway measured of this backend's answers (TTFT, time per token), smoothed:
    the latency scorer blends it with the matrix prior (:mod:`quantroute.core.latency`)."""
    peers: ObservedLatency | None = None
    """The other replicas of its variant, measured (pooled): where its own blend starts from
    instead of the bare prior (None: no peer measured, or ``measured_latency`` off)."""
    ttft_fit: TtftFit | None = None
    """The TTFT factors of ``observed`` started from ``peers`` (:func:`~quantroute.core.latency.fit`)
    under the snapshot's policy, worked out once by the state store while neither changes
    (None: the latency scorer works them out)."""
    id: str = field(init=False, default="", repr=False)
    """``config.id``, copied at construction: read a dozen times per decision, and a read of a
    pydantic model's field cannot be specialised by CPython 3.11 (``BaseModel.__getattr__``)."""
    variant_id: str = field(init=False, default="", repr=False)
    """``config.variant_id`` (its variant, or its id), copied likewise."""

    def __post_init__(self) -> None:
        config = self.config
        backend_id = config.id
        object.__setattr__(self, "id", backend_id)
        object.__setattr__(self, "variant_id", config.variant or backend_id)


@quick_init
@dataclass(frozen=True, slots=True)
class Snapshot:
    taken_at: float
    backends: tuple[BackendState, ...]


@quick_init
@dataclass(frozen=True, slots=True)
class RequestFeatures:
    model: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool = False
    task: TaskType = "chat"
    latency_class: LatencyClass = LatencyClass.INTERACTIVE
    sequence: int = 0
    """A monotonically increasing request number (round robin, tie-break seeding)."""
    api: ApiName = "chat"
    """The client API of the request: only backends that serve it are candidates."""
    prompt: PromptBlocks | None = None
    """The prompt's block keys for the prefix index (None: prefix tracking is off)."""
    session_id: str | None = None
    """``x-session-id``, else the body's ``prompt_cache_key``, else its ``user`` (when enabled)."""
    prefix: PrefixView | None = None
    """Expected hit share per backend, filled in by the gateway just before the decision."""


@quick_init
@dataclass(frozen=True, slots=True)
class Scores:
    total: float
    parts: dict[str, float] = field(default_factory=dict)


@quick_init
@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one filter turned one backend away: the filter's name and a human-readable detail.

    Code reads the fields (``filter``, ``kv_pressure``), never the text: rewording a detail
    changes no routing and no metric label.
    """

    filter: str
    detail: str
    kv_pressure: bool = False
    """The backend was turned away because its KV cache is (or would be) too full: a
    cache-pressure event when another backend is chosen instead."""
    saturated: bool = False
    """The backend is turned away for want of room now (KV cache, vLLM's waiting queue), not
    for what it is: the reason clears by itself as its requests finish (flow control waits)."""

    def __str__(self) -> str:
        return f"{self.filter}: {self.detail}"


class Outcome(StrEnum):
    ROUTED = "routed"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED_API = "unsupported_api"
    """The model or group exists, but none of its backends serves the request's API."""
    TOO_LONG = "too_long"
    NO_BACKEND = "no_backend"


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    chosen: str | None
    ranked: tuple[str, ...]
    """Every admitted candidate, best first (the chosen one first): the retry order."""
    scores: dict[str, Scores]
    rejected: dict[str, tuple[Rejection, ...]]
    """Backend id -> why it was filtered out (only backends in the requested model/group)."""
    kv_pressure: tuple[str, ...] = ()
    """Backends steered away from by KV pressure (cache-pressure events)."""
    relaxed: tuple[str, ...] = ()
    """Soft filters relaxed because they would have left no candidate."""
    group: str | None = None
    quality_floor: float = 0.0
    latency: dict[str, LatencyEstimate] = field(default_factory=dict)
    """Per admitted candidate: the latency estimate (prior, measured factors, blend). The
    request path keeps the chosen backend's prior split to judge the TTFT it then observes."""
    saturated: bool = False
    """No backend, and at least one would be admitted but for saturation alone (KV cache or
    waiting queue): room will come, so flow control may hold the request. False for an unknown
    model, a prompt too long, or backends that are down, ejected or below the floor."""

    @property
    def downgraded(self) -> bool:
        """Routed below the group's quality floor because the variants meeting it were
        saturated (``on_saturation: downgrade``)."""
        return self.outcome is Outcome.ROUTED and "downgrade" in self.relaxed

    def explain(self) -> str:
        parts = [f"chosen={self.chosen}"]
        parts += [f"{k}:{v.total:.3f}" for k, v in self.scores.items()]
        parts += [f"{k}!{'|'.join(map(str, v))}" for k, v in self.rejected.items()]
        return " ".join(parts)
