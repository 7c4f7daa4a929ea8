"""The capability matrix: what the profiler measured about each model variant, and pure lookups."""

from __future__ import annotations

from pydantic import Field

from quantroute.base import FrozenModel
from quantroute.config import TaskType

SCHEMA_VERSION = 1


class Percentiles(FrozenModel):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    n: int = 0
    p99_reliable: bool = False
    """False when fewer samples were taken than a p99 needs (see the profiler's rule)."""


class ThroughputPoint(FrozenModel):
    concurrency: int
    output_tokens_per_s: float
    requests: int
    errors: int = 0
    ttft_p50_ms: float | None = None
    timeouts: int = 0
    ttft_p95_ms: float | None = None
    duration_s: float | None = None
    """Wall-clock seconds the level took, converted by the profiler's time scale."""


class TaskProfile(FrozenModel):
    quality: float | None = Field(default=None, ge=0.0, le=1.0)
    relative_quality: float | None = Field(default=None, ge=0.0)
    samples: int = 0
    passed: int = 0
    errors: int = 0
    timeouts: int = 0
    stable: bool = True
    reason: str | None = None


class VariantProfile(FrozenModel):
    backend_url: str | None = None
    served_model_name: str | None = None
    gpu: str | None = None
    gpu_cost_per_hour: float | None = None
    ttft_ms: Percentiles = Percentiles()
    itl_ms: Percentiles = Percentiles()
    throughput: tuple[ThroughputPoint, ...] = ()
    best_concurrency: int | None = None
    cost_per_1m_output_tokens: float | None = None
    prefill_tokens_per_s: float | None = None
    """Prompt tokens per second an idle backend prefills at: the inverse slope of TTFT over prompt
    tokens at concurrency 1 (the profiler's prefill probe); None when not measured."""
    tasks: dict[TaskType, TaskProfile] = Field(default_factory=dict)
    error: str | None = None
    """Why the variant could not be profiled at all (then every figure is None, never 0)."""


class SuiteInfo(FrozenModel):
    name: str
    task: TaskType
    size: int


class ProfilerInfo(FrozenModel):
    """How the figures were measured (all optional: older files and hand-written ones lack it)."""

    time_scale: float = 1.0
    latency_concurrency: int | None = None
    concurrency_levels: tuple[int, ...] = ()
    quality_floor: float | None = None
    max_error_rate: float | None = None
    ttft_slo_ms: float | None = None
    p99_min_samples: int | None = None
    request_timeout_s: float | None = None
    prefill_prompt_tokens: tuple[int, ...] = ()
    prefill_repeats: int | None = None


class CapabilityMatrix(FrozenModel):
    schema_version: int
    generated_at: str
    suites: tuple[SuiteInfo, ...] = ()
    variants: dict[str, VariantProfile] = Field(default_factory=dict)
    partial: bool = False
    """True when profiling was interrupted: the figures cover only what was measured."""
    profiler: ProfilerInfo | None = None

    def quality(self, variant: str, task: TaskType) -> float | None:
        profile = self.variants.get(variant)
        if profile is None or task not in profile.tasks:
            return None
        return profile.tasks[task].quality

    def stable(self, variant: str, task: TaskType) -> bool | None:
        profile = self.variants.get(variant)
        if profile is None or task not in profile.tasks:
            return None
        return profile.tasks[task].stable

    def ttft_p50_ms(self, variant: str) -> float | None:
        profile = self.variants.get(variant)
        return None if profile is None else profile.ttft_ms.p50

    def itl_p50_ms(self, variant: str) -> float | None:
        profile = self.variants.get(variant)
        return None if profile is None else profile.itl_ms.p50

    def prefill_tokens_per_s(self, variant: str) -> float | None:
        profile = self.variants.get(variant)
        return None if profile is None else profile.prefill_tokens_per_s

    def cost_per_1m(self, variant: str) -> float | None:
        profile = self.variants.get(variant)
        return None if profile is None else profile.cost_per_1m_output_tokens
