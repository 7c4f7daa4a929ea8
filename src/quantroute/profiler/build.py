"""Measured records -> the capability matrix. Pure: no I/O, the date is passed in.

Rules (the README's profiler section states them too):

- quality = passed / answered, where answered excludes failed and timed-out requests; None when
  nothing was answered. relative_quality = quality / the best variant's quality on that task.
- a task is unstable when (errors + timeouts) / samples > max_error_rate, or quality < floor,
  or nothing was answered; the reason is recorded.
- a sweep level qualifies when its error rate is within max_error_rate (and its TTFT p95 within
  the SLO, when one is set); the best stable concurrency is the qualifying level with the
  highest output tokens/s, and cost per 1M output tokens = price per hour / (tokens/s x 3600) x 1e6
  there. No qualifying level, or no price: cost is None, never 0.
- latencies are wall time x time_scale; throughput is tokens / wall time / time_scale.
- prefill_tokens_per_s = 1 / (least-squares slope of median TTFT over prompt tokens x time_scale)
  from the prefill probe; None when it was skipped or the slope is not positive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from quantroute.config import TaskType
from quantroute.core.matrix import (
    SCHEMA_VERSION,
    CapabilityMatrix,
    ProfilerInfo,
    SuiteInfo,
    TaskProfile,
    ThroughputPoint,
    VariantProfile,
)
from quantroute.profiler.prefill import prefill_rate
from quantroute.profiler.runner import LevelResult, TaskTally, VariantRecord
from quantroute.profiler.settings import P99_MIN_SAMPLES, ProfileSettings
from quantroute.profiler.stats import percentiles, quantile


def task_profile(tally: TaskTally, settings: ProfileSettings) -> TaskProfile:
    answered = tally.samples - tally.errors - tally.timeouts
    quality = tally.passed / answered if answered > 0 else None
    failed = (tally.errors + tally.timeouts) / tally.samples if tally.samples else 1.0
    reason = None
    if quality is None:
        reason = f"no request answered ({tally.samples} sent): {tally.first_error}"
    elif failed > settings.max_error_rate:
        reason = (
            f"{failed:.0%} of requests failed or timed out (limit {settings.max_error_rate:.0%})"
            f": {tally.first_error}"
        )
    elif quality < settings.quality_floor:
        reason = f"quality {quality:.2f} below the floor {settings.quality_floor:.2f}"
    return TaskProfile(
        quality=quality,
        samples=tally.samples,
        passed=tally.passed,
        errors=tally.errors,
        timeouts=tally.timeouts,
        stable=reason is None,
        reason=reason,
    )


def throughput_point(level: LevelResult, settings: ProfileSettings) -> ThroughputPoint:
    ttfts = [settings.real_ms(t) for t in level.ttfts_s]
    return ThroughputPoint(
        concurrency=level.concurrency,
        output_tokens_per_s=level.output_tokens / level.wall_s / settings.time_scale,
        requests=level.requests,
        errors=level.errors,
        timeouts=level.timeouts,
        ttft_p50_ms=quantile(ttfts, 0.5),
        ttft_p95_ms=quantile(ttfts, 0.95),
        duration_s=level.wall_s * settings.time_scale,
    )


def qualifies(point: ThroughputPoint, settings: ProfileSettings) -> bool:
    failed = (point.errors + point.timeouts) / point.requests if point.requests else 1.0
    if failed > settings.max_error_rate or point.output_tokens_per_s <= 0:
        return False
    slo = settings.ttft_slo_ms
    return slo is None or (point.ttft_p95_ms is not None and point.ttft_p95_ms <= slo)


def best_point(
    points: Sequence[ThroughputPoint], settings: ProfileSettings
) -> ThroughputPoint | None:
    stable = [p for p in points if qualifies(p, settings)]
    return max(stable, key=lambda p: p.output_tokens_per_s, default=None)


def cost_per_1m(price_per_hour: float, tokens_per_s: float) -> float | None:
    """Dollars per million output tokens; None when the price is unknown (0) or no throughput."""
    if price_per_hour <= 0 or tokens_per_s <= 0:
        return None
    return price_per_hour / (tokens_per_s * 3600.0) * 1e6


def failed_variant(record: VariantRecord, tasks: Sequence[TaskType]) -> VariantProfile:
    """A variant that could not be profiled: every task unstable with the reason, no figures."""
    reason = f"backend failed: {record.error}"
    target = record.target
    profiles = {
        task: TaskProfile(
            quality=None,
            samples=record.tasks[task].samples if task in record.tasks else 0,
            errors=record.tasks[task].errors if task in record.tasks else 0,
            timeouts=record.tasks[task].timeouts if task in record.tasks else 0,
            stable=False,
            reason=reason,
        )
        for task in tasks
    }
    return VariantProfile(
        backend_url=target.url,
        served_model_name=target.served_model_name,
        gpu=target.gpu,
        gpu_cost_per_hour=target.gpu_cost_per_hour,
        tasks=profiles,
        error=record.error,
    )


def variant_profile(
    record: VariantRecord, tasks: Sequence[TaskType], settings: ProfileSettings
) -> VariantProfile:
    if record.error is not None and record.successes == 0:
        return failed_variant(record, tasks)
    points = tuple(throughput_point(level, settings) for level in record.levels)
    best = best_point(points, settings)
    target = record.target
    return VariantProfile(
        backend_url=target.url,
        served_model_name=target.served_model_name,
        gpu=target.gpu,
        gpu_cost_per_hour=target.gpu_cost_per_hour,
        ttft_ms=percentiles([settings.real_ms(t) for t in record.ttfts_s]),
        itl_ms=percentiles([settings.real_ms(t) for t in record.itls_s]),
        throughput=points,
        prefill_tokens_per_s=prefill_rate(record.prefill, settings.time_scale),
        best_concurrency=None if best is None else best.concurrency,
        cost_per_1m_output_tokens=(
            None
            if best is None
            else cost_per_1m(target.gpu_cost_per_hour, best.output_tokens_per_s)
        ),
        tasks={t: task_profile(record.tasks[t], settings) for t in tasks if t in record.tasks},
        error=record.error,
    )


def with_relative_quality(variants: dict[str, VariantProfile]) -> dict[str, VariantProfile]:
    """Each task's quality divided by the best variant's quality on that task."""
    best: dict[TaskType, float] = {}
    for profile in variants.values():
        for task, tp in profile.tasks.items():
            if tp.quality is not None:
                best[task] = max(best.get(task, 0.0), tp.quality)
    out = {}
    for name, profile in variants.items():
        tasks = {
            task: tp.model_copy(
                update={
                    "relative_quality": (
                        tp.quality / best[task]
                        if tp.quality is not None and best.get(task)
                        else None
                    )
                }
            )
            for task, tp in profile.tasks.items()
        }
        out[name] = profile.model_copy(update={"tasks": tasks})
    return out


def profiler_info(settings: ProfileSettings) -> ProfilerInfo:
    return ProfilerInfo(
        time_scale=settings.time_scale,
        latency_concurrency=settings.latency_concurrency,
        concurrency_levels=settings.concurrency_levels,
        quality_floor=settings.quality_floor,
        max_error_rate=settings.max_error_rate,
        ttft_slo_ms=settings.ttft_slo_ms,
        p99_min_samples=P99_MIN_SAMPLES,
        request_timeout_s=settings.request_timeout_s,
        prefill_prompt_tokens=settings.prefill_prompt_tokens,
        prefill_repeats=settings.prefill_repeats,
    )


def build_matrix(
    records: Mapping[str, VariantRecord],
    suites: Sequence[SuiteInfo],
    settings: ProfileSettings,
    *,
    generated_at: datetime,
    partial: bool = False,
) -> CapabilityMatrix:
    tasks = [t for t in settings.tasks if any(s.task == t for s in suites)]
    variants = {name: variant_profile(r, tasks, settings) for name, r in records.items()}
    return CapabilityMatrix(
        schema_version=SCHEMA_VERSION,
        generated_at=generated_at.isoformat(timespec="seconds"),
        suites=tuple(suites),
        variants=with_relative_quality(variants),
        partial=partial,
        profiler=profiler_info(settings),
    )
