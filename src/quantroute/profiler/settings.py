"""What the profiler is told: typed, frozen settings with the defaults the CLI shows."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from quantroute.base import FrozenModel
from quantroute.config import TASK_TYPES, TaskType

DEFAULT_LEVELS: tuple[int, ...] = (1, 8, 32, 128)
DEFAULT_PREFILL_TOKENS: tuple[int, ...] = (512, 1024, 2048, 4096)
P99_MIN_SAMPLES = 100
"""A p99 is quoted as reliable only from this many observations on: below it no observation lies
above the 99th percentile and the "p99" is just the largest value seen."""

Positive = Annotated[float, Field(gt=0.0)]


class ProfileSettings(FrozenModel):
    """Every knob of one profiling run. Times are in real (not simulator-wall) seconds."""

    tasks: tuple[TaskType, ...] = TASK_TYPES
    samples_per_task: int | None = Field(default=None, gt=0)
    """Use at most this many samples of each task type (None: all of them)."""
    latency_concurrency: int = Field(default=4, gt=0)
    """Requests in flight per variant while the graded samples run (TTFT and ITL come from these)."""
    concurrency_levels: tuple[int, ...] = DEFAULT_LEVELS
    rounds_per_level: int = Field(default=3, gt=0)
    """Each sweep level sends max(level x rounds, min_requests_per_level) requests."""
    min_requests_per_level: int = Field(default=16, gt=0)
    prefill_prompt_tokens: tuple[int, ...] = DEFAULT_PREFILL_TOKENS
    """Prompt lengths (tokens) of the prefill probe; those above 3/4 of a backend's context are
    skipped for it."""
    prefill_repeats: int = Field(default=3, ge=0)
    """Requests per prompt length in the prefill probe (the median counts); 0 skips the probe."""
    quality_floor: float = Field(default=0.5, ge=0.0, le=1.0)
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    ttft_slo_ms: Positive | None = None
    """A sweep level qualifies for "best" only when its TTFT p95 is within this SLO."""
    request_timeout_s: Positive = 120.0
    time_scale: Positive = 1.0
    """Simulated seconds per wall second of the backends (1 for real ones): measured latencies
    are multiplied by it and throughput divided by it, back into the backends' own time."""
    api_key: str = "EMPTY"
    variants: tuple[str, ...] = ()
    """Profile only these variants (empty: every variant of the config)."""
    max_parallel: int | None = Field(default=None, gt=0)
    """Backends profiled at the same time (None: all distinct backend URLs at once). Lower it
    when the profiling host, not the backends, would be the bottleneck."""

    @model_validator(mode="after")
    def _levels(self) -> ProfileSettings:
        if not self.concurrency_levels or min(self.concurrency_levels) < 1:
            raise ValueError("concurrency_levels must be positive integers")
        if any(n < 1 for n in self.prefill_prompt_tokens):
            raise ValueError("prefill_prompt_tokens must be positive integers")
        if not self.tasks:
            raise ValueError("at least one task type is needed")
        return self

    def wall_s(self, real_s: float) -> float:
        """A real duration as the wall time it takes on a backend sped up by time_scale."""
        return real_s / self.time_scale

    def real_ms(self, wall_s: float) -> float:
        """A measured wall duration in real milliseconds."""
        return wall_s * self.time_scale * 1000.0
