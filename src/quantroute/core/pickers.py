"""Pickers: order scored candidates; the first is chosen, the rest are the retry order."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from quantroute.core.model import RequestFeatures

Picker = Callable[[Mapping[str, float], RequestFeatures, float, int], list[str]]
_MASK = (1 << 64) - 1


def mix(value: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread deterministic hash (seeding ``random.Random``
    per decision cost more than the whole rest of the decision)."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def two_choices(count: int, entropy: int) -> tuple[int, int]:
    """Two distinct indices in ``range(count)`` (count >= 2) drawn from ``entropy``."""
    first = entropy % count
    second = (entropy >> 32) % (count - 1)
    return first, second + 1 if second >= first else second


def best(scores: Mapping[str, float], _f: RequestFeatures, tol: float, entropy: int) -> list[str]:
    """Best score; among near-ties (within ``tol`` of the best) take the better of two random picks."""
    ranked = sorted(scores, key=lambda k: (-scores[k], k))
    top = [k for k in ranked if scores[k] >= scores[ranked[0]] - tol]
    if len(top) >= 2:
        i, j = two_choices(len(top), entropy)
        first, second = top[i], top[j]
        chosen = first if scores[first] >= scores[second] else second
        ranked.remove(chosen)
        ranked.insert(0, chosen)
    return ranked


def round_robin(
    scores: Mapping[str, float], features: RequestFeatures, _t: float, _e: int
) -> list[str]:
    ids = sorted(scores)
    start = features.sequence % len(ids)
    return ids[start:] + ids[:start]


REGISTRY: dict[str, Picker] = {"best": best, "round_robin": round_robin}
