"""A seeded synthetic trace (features only): Poisson arrivals with bursts, a task mix with
log-normal prompt and answer lengths, a long-context tail, premium and batch shares.

The routing benchmark builds its trace on these draws (and then writes prompt text for each
row); tests and ``quantroute tune`` examples use :func:`generate` directly.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from quantroute.config import TaskType
from quantroute.core.model import LatencyClass
from quantroute.replay.trace import TraceRow


@dataclass(frozen=True)
class LengthDist:
    """A log-normal length in tokens, clipped to [low, high]."""

    median: float
    sigma: float
    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(self.high, max(self.low, round(value))))


@dataclass(frozen=True)
class TaskShape:
    share: float
    prompt: LengthDist
    output: LengthDist
    max_tokens: int


def default_shapes() -> dict[TaskType, TaskShape]:
    return {
        "coding": TaskShape(
            0.25, LengthDist(700, 0.7, 120, 5000), LengthDist(300, 0.6, 20, 1000), 1024
        ),
        "reasoning": TaskShape(
            0.20, LengthDist(220, 0.6, 60, 3000), LengthDist(260, 0.5, 20, 900), 1024
        ),
        "extraction": TaskShape(
            0.20, LengthDist(900, 0.6, 120, 5000), LengthDist(80, 0.5, 10, 400), 512
        ),
        "chat": TaskShape(0.35, LengthDist(180, 0.8, 40, 3000), LengthDist(160, 0.7, 10, 700), 768),
    }


@dataclass(frozen=True)
class TraceParams:
    """Everything that shapes a generated trace."""

    seed: int = 7
    requests: int = 2000
    rate_per_s: float = 6.0
    """Mean arrival rate outside bursts (requests per simulated second)."""
    burst_every_s: float = 60.0
    """Mean gap between burst starts (exponential)."""
    burst_len_s: float = 8.0
    burst_factor: float = 4.0
    premium_share: float = 0.3
    long_share: float = 0.015
    long_tokens: tuple[int, int] = (6000, 30000)
    long_tasks: tuple[TaskType, ...] = ("extraction", "coding", "chat")
    batch_share: float = 0.0
    """Share of requests sent as ``x-quantroute-priority: batch`` (drawn only when > 0, so a
    trace without batch traffic is the same as before the field existed)."""
    shapes: dict[TaskType, TaskShape] = field(default_factory=default_shapes)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def burst_windows(
    params: TraceParams, rng: random.Random, horizon: float
) -> list[tuple[float, float]]:
    windows: list[tuple[float, float]] = []
    t = rng.expovariate(1.0 / params.burst_every_s)
    while t < horizon:
        windows.append((t, t + params.burst_len_s))
        t += params.burst_len_s + rng.expovariate(1.0 / params.burst_every_s)
    return windows


def arrivals(
    params: TraceParams, rng: random.Random
) -> tuple[list[float], list[tuple[float, float]]]:
    """Poisson arrivals whose rate is ``burst_factor`` times higher inside burst windows."""
    horizon = 4.0 * params.requests / params.rate_per_s
    windows = burst_windows(params, rng, horizon)
    edges = sorted({e for w in windows for e in w})
    times: list[float] = []
    t = 0.0
    while len(times) < params.requests:
        inside = any(a <= t < b for a, b in windows)
        rate = params.rate_per_s * (params.burst_factor if inside else 1.0)
        step = rng.expovariate(rate)
        boundary = next((e for e in edges if e > t), math.inf)
        if t + step >= boundary:
            t = boundary  # memoryless: restart the clock at the rate change
            continue
        t += step
        times.append(t)
    start = times[0]  # traces start at their first arrival, as loaded ones do
    shifted = [(a - start, b - start) for a, b in windows if a <= times[-1]]
    return [round(x - start, 4) for x in times], shifted


def _pick_task(params: TraceParams, rng: random.Random) -> TaskType:
    tasks = list(params.shapes)
    weights = [params.shapes[t].share for t in tasks]
    return rng.choices(tasks, weights)[0]


def draw(params: TraceParams, rng: random.Random, number: int, t: float) -> TraceRow:
    """One request's features, drawn from ``rng`` in a fixed order."""
    task = _pick_task(params, rng)
    shape = params.shapes[task]
    output = shape.output.sample(rng)
    if rng.random() < params.long_share:
        task = rng.choice(params.long_tasks)
        shape = params.shapes[task]
        low, high = params.long_tokens
        prompt = round(math.exp(rng.uniform(math.log(low), math.log(high))))
    else:
        prompt = shape.prompt.sample(rng)
    tier = "premium" if rng.random() < params.premium_share else "standard"
    batch = params.batch_share > 0 and rng.random() < params.batch_share
    return TraceRow(
        id=f"r{number:05d}",
        t=t,
        task=task,
        prompt_tokens=prompt,
        max_tokens=shape.max_tokens,
        output_tokens=min(output, shape.max_tokens),
        latency_class=LatencyClass.BATCH if batch else LatencyClass.INTERACTIVE,
        tier=tier,
    )


def generate(params: TraceParams) -> list[TraceRow]:
    """The feature-only trace of ``params`` (deterministic for its seed)."""
    rng = random.Random(params.seed)
    times, _ = arrivals(params, rng)
    return [draw(params, rng, number, t) for number, t in enumerate(times)]
