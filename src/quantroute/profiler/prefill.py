"""The prefill rate: how many prompt tokens per second an idle backend prefills.

At concurrency 1 the profiler sends prompts of several lengths with ``max_tokens`` 1, each length
``repeats`` times (lengths interleaved, so a drifting load affects them alike), after one
discarded warm-up request. Each request's TTFT is the time to prefill its prompt plus a fixed cost
(HTTP, tokenization, queueing in the engine, the first decode step). Per length the median TTFT
and the median prompt tokens the server reports (``usage.prompt_tokens``); the least-squares
slope of TTFT over prompt tokens through those medians is seconds per prompt token, so the
fixed cost drops out, and the rate is its inverse. A non-positive slope is "not measured" (None),
never a number. Every prompt starts with its own words, so a server's prefix cache cannot serve
one request from another's blocks.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from openai import AsyncOpenAI

from quantroute.profiler.requests import Observation, run_sample
from quantroute.workloads import Sample

WORDS: tuple[str, ...] = (
    "oak", "elm", "ash", "fir", "yew", "bay", "box", "fig", "nut", "pea",
    "rye", "oat", "hay", "bee", "ant", "owl", "cod", "eel", "ram", "elk",
    "sun", "sky", "sea", "bog", "fen", "dew", "fog", "ice", "mud", "ore",
    "tin", "gem", "orb", "arc", "rim", "hub", "cog", "peg", "pin", "rod",
)  # fmt: skip
"""Three-letter words: one token each for common tokenizers, and four characters with the
space, one token for the simulator too."""
FIT_FRACTION = 0.75
"""Lengths above this share of the backend's context are skipped (tokenizers vary)."""


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    """One prompt length: median reported prompt tokens and median TTFT (wall seconds)."""

    prompt_tokens: int
    ttft_s: float
    samples: int


def prompt_text(tokens: int, nonce: int) -> str:
    """About ``tokens`` tokens of words; the opening words differ for every ``nonce``."""
    n = len(WORDS)
    head = [WORDS[nonce % n], WORDS[(nonce // n) % n], WORDS[(nonce // (n * n)) % n]]
    body = [WORDS[(i * 7 + nonce) % n] for i in range(max(tokens - len(head), 0))]
    return " ".join(head + body)


def probe_sample(tokens: int, nonce: int) -> Sample:
    """A one-token request over a prompt of about ``tokens`` tokens (never graded)."""
    return Sample.model_validate(
        {
            "id": f"prefill-{tokens}-{nonce}",
            "task": "chat",
            "messages": [{"role": "user", "content": prompt_text(tokens, nonce)}],
            "max_tokens": 1,
            "check": {"type": "regex", "pattern": ""},
        }
    )


def usable_sizes(sizes: Sequence[int], max_seq_len: int) -> tuple[int, ...]:
    return tuple(sorted({s for s in sizes if s <= FIT_FRACTION * max_seq_len}))


def summarize(observations: Sequence[tuple[int, Observation]]) -> list[PrefillPoint]:
    """Per requested length, the medians of the successful requests' prompt tokens and TTFT."""
    by_size: dict[int, list[Observation]] = {}
    for size, obs in observations:
        if obs.ok and obs.ttft_s is not None and obs.prompt_tokens:
            by_size.setdefault(size, []).append(obs)
    return [
        PrefillPoint(
            prompt_tokens=round(statistics.median(o.prompt_tokens or 0 for o in group)),
            ttft_s=statistics.median(o.ttft_s or 0.0 for o in group),
            samples=len(group),
        )
        for _, group in sorted(by_size.items())
    ]


def prefill_rate(points: Sequence[PrefillPoint], time_scale: float = 1.0) -> float | None:
    """Prompt tokens per (real) second: the inverse least-squares slope of TTFT over prompt
    tokens; None with fewer than two distinct lengths or a slope that is not positive."""
    if len({p.prompt_tokens for p in points}) < 2:
        return None
    slope = statistics.linear_regression(
        [float(p.prompt_tokens) for p in points], [p.ttft_s for p in points]
    ).slope
    return None if slope <= 0 else 1.0 / (slope * time_scale)


async def measure_prefill(
    client: AsyncOpenAI,
    model: str,
    sizes: Sequence[int],
    repeats: int,
    timeout_wall_s: float,
) -> list[PrefillPoint]:
    """TTFT per prompt length at concurrency 1 (wall seconds); see the module docstring."""
    if not sizes or repeats <= 0:
        return []
    await run_sample(client, model, probe_sample(min(sizes), 0), timeout_wall_s)
    observed: list[tuple[int, Observation]] = []
    nonce = 1
    for _ in range(repeats):
        for size in sizes:
            obs = await run_sample(client, model, probe_sample(size, nonce), timeout_wall_s)
            observed.append((size, obs))
            nonce += 1
    return summarize(observed)
