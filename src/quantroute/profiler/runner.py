"""Profile variants: the graded phase (quality, TTFT, ITL), the prefill probe (prompt tokens/s)
and the concurrency sweep (throughput).

Results accumulate in :class:`VariantRecord` objects owned by the caller, so whatever was measured
before an interruption (Ctrl-C cancels the tasks) can still be written out.
Variants on distinct backend URLs run concurrently; variants sharing a URL run one after another.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from openai import AsyncOpenAI

from quantroute.config import BackendConfig, GatewayConfig, TaskType
from quantroute.profiler.prefill import PrefillPoint, measure_prefill, usable_sizes
from quantroute.profiler.requests import Observation, make_client, run_sample
from quantroute.profiler.settings import ProfileSettings
from quantroute.workloads import Sample, grade

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[str, str, int, int], None]
"""Called as progress(variant, phase, done, total) after every request."""
FAIL_FAST_AFTER = 8
"""A variant whose first this-many graded requests all fail is given up on."""


def no_progress(variant: str, phase: str, done: int, total: int) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True, slots=True)
class Target:
    """One variant to profile, on its own backend."""

    variant: str
    url: str
    served_model_name: str
    gpu: str
    gpu_cost_per_hour: float
    max_seq_len: int = 8192

    @classmethod
    def of(cls, backend: BackendConfig) -> Target:
        return cls(
            backend.variant_id,
            backend.url,
            backend.served_model_name,
            backend.gpu,
            backend.gpu_cost_per_hour,
            backend.max_seq_len,
        )


@dataclass
class TaskTally:
    samples: int = 0
    passed: int = 0
    errors: int = 0
    timeouts: int = 0
    first_error: str | None = None

    def add(self, obs: Observation, passed: bool) -> None:
        self.samples += 1
        self.passed += passed
        self.timeouts += obs.timed_out
        self.errors += not obs.ok and not obs.timed_out
        if not obs.ok and self.first_error is None:
            self.first_error = obs.error


@dataclass(frozen=True, slots=True)
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    timeouts: int
    output_tokens: int
    wall_s: float
    ttfts_s: tuple[float, ...]


@dataclass
class VariantRecord:
    """Everything measured about one variant so far (wall-clock units)."""

    target: Target
    tasks: dict[TaskType, TaskTally] = field(default_factory=dict)
    ttfts_s: list[float] = field(default_factory=list)
    itls_s: list[float] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)
    prefill: list[PrefillPoint] = field(default_factory=list)
    """Median TTFT per prompt length at concurrency 1 (see :mod:`quantroute.profiler.prefill`)."""
    error: str | None = None
    successes: int = 0

    def add(self, sample: Sample, obs: Observation) -> None:
        passed = obs.ok and grade(sample.check, obs.text).passed
        self.tasks.setdefault(sample.task, TaskTally()).add(obs, passed)
        if obs.ok:
            self.successes += 1
            if obs.ttft_s is not None:
                self.ttfts_s.append(obs.ttft_s)
            if obs.itl_s is not None:
                self.itls_s.append(obs.itl_s)


async def run_pool(
    items: Iterable[T], concurrency: int, work: Callable[[T], Awaitable[R]]
) -> list[R]:
    """``work`` over ``items`` with at most ``concurrency`` in flight; results in finish order."""
    source = iter(items)
    results: list[R] = []

    async def worker() -> None:
        for item in source:
            results.append(await work(item))

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return results


class VariantProfiler:
    """Runs both phases against one target, recording into ``record``."""

    def __init__(
        self,
        record: VariantRecord,
        client: AsyncOpenAI,
        settings: ProfileSettings,
        progress: Progress,
    ) -> None:
        self.record = record
        self.client = client
        self.settings = settings
        self.progress = progress
        self.timeout_wall_s = settings.wall_s(settings.request_timeout_s)

    async def _request(self, sample: Sample) -> Observation:
        target = self.record.target
        return await run_sample(self.client, target.served_model_name, sample, self.timeout_wall_s)

    async def graded(self, samples: Sequence[Sample]) -> None:
        variant, total = self.record.target.variant, len(samples)
        failures = 0

        async def one(sample: Sample) -> None:
            nonlocal failures
            if self.record.error is not None:
                return
            obs = await self._request(sample)
            self.record.add(sample, obs)
            failures = 0 if obs.ok else failures + 1
            if self.record.successes == 0 and failures >= FAIL_FAST_AFTER:
                self.record.error = f"the first {failures} requests all failed: {obs.error}"
            self.progress(
                variant, "graded", sum(t.samples for t in self.record.tasks.values()), total
            )

        self.progress(variant, "graded", 0, total)
        await run_pool(samples, self.settings.latency_concurrency, one)

    async def prefill(self) -> None:
        """The prefill probe on the otherwise idle backend (nothing else of ours in flight)."""
        target, settings = self.record.target, self.settings
        sizes = usable_sizes(settings.prefill_prompt_tokens, target.max_seq_len)
        total = len(sizes) * settings.prefill_repeats
        self.progress(target.variant, "prefill", 0, total)
        self.record.prefill = await measure_prefill(
            self.client, target.served_model_name, sizes, settings.prefill_repeats,
            self.timeout_wall_s,
        )  # fmt: skip
        self.progress(target.variant, "prefill", total, total)

    async def sweep(self, samples: Sequence[Sample]) -> None:
        settings = self.settings
        plan = [
            (level, max(level * settings.rounds_per_level, settings.min_requests_per_level))
            for level in settings.concurrency_levels
        ]
        total, done = sum(n for _, n in plan), 0
        variant = self.record.target.variant
        self.progress(variant, "sweep", 0, total)
        for level, count in plan:
            result = await self._level(level, count, samples)
            self.record.levels.append(result)
            done += count
            self.progress(variant, "sweep", done, total)
            if (result.errors + result.timeouts) / count > settings.max_error_rate:
                break  # more load will not be more stable
        self.progress(variant, "sweep", total, total)

    async def _level(self, level: int, count: int, samples: Sequence[Sample]) -> LevelResult:
        prompts = itertools.islice(itertools.cycle(samples), count)
        started = time.perf_counter()
        observations = await run_pool(prompts, level, self._request)
        ended = max((o.ended for o in observations), default=started)
        ok = [o for o in observations if o.ok]
        return LevelResult(
            concurrency=level,
            requests=count,
            errors=sum(1 for o in observations if not o.ok and not o.timed_out),
            timeouts=sum(1 for o in observations if o.timed_out),
            output_tokens=sum(o.completion_tokens or 0 for o in ok),
            wall_s=max(ended - started, 1e-9),
            ttfts_s=tuple(o.ttft_s for o in ok if o.ttft_s is not None),
        )


async def profile_target(
    record: VariantRecord,
    samples: Sequence[Sample],
    settings: ProfileSettings,
    progress: Progress = no_progress,
) -> None:
    """Both phases for one variant; a variant that fails entirely skips the sweep."""
    client = make_client(record.target.url, settings.api_key)
    try:
        profiler = VariantProfiler(record, client, settings, progress)
        await profiler.graded(samples)
        if record.successes == 0:
            record.error = record.error or _first_error(record) or "no request succeeded"
            return
        await profiler.prefill()
        await profiler.sweep(samples)
    finally:
        await close_even_if_cancelled(client)


async def close_even_if_cancelled(client: AsyncOpenAI) -> None:
    """Close ``client``'s connections even when the run is cancelled (Ctrl-C) during the close:
    a close cut short leaves pooled sockets open. The close runs to its end, then the
    cancellation goes on."""
    closing = asyncio.ensure_future(client.close())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await closing
        raise


def _first_error(record: VariantRecord) -> str | None:
    return next((t.first_error for t in record.tasks.values() if t.first_error), None)


def targets_of(config: GatewayConfig, only: Sequence[str] = ()) -> list[Target]:
    """One target per variant (its first backend: replicas of a variant are alike)."""
    seen: dict[str, Target] = {}
    for backend in config.backends:
        if backend.variant_id not in seen and (not only or backend.variant_id in only):
            seen[backend.variant_id] = Target.of(backend)
    known = sorted({b.variant_id for b in config.backends})
    missing = sorted(set(only) - set(known))
    if missing:
        raise ValueError(f"unknown variant(s) {missing}; the config has {known}")
    return list(seen.values())


async def profile_all(
    records: dict[str, VariantRecord],
    targets: Sequence[Target],
    samples: Sequence[Sample],
    settings: ProfileSettings,
    progress: Progress = no_progress,
) -> None:
    """Profile every target, concurrently across distinct URLs; fills ``records`` as it goes."""
    by_url: dict[str, list[Target]] = {}
    for target in targets:
        by_url.setdefault(target.url.rstrip("/"), []).append(target)
        records[target.variant] = VariantRecord(target)

    gate = asyncio.Semaphore(settings.max_parallel or len(by_url) or 1)

    async def one_url(group: list[Target]) -> None:
        async with gate:
            for target in group:
                await profile_target(records[target.variant], samples, settings, progress)

    async with asyncio.TaskGroup() as tasks:
        for group in by_url.values():
            tasks.create_task(one_url(group))
