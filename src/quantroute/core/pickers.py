"""Pickers: order scored candidates; the first is chosen, the rest are the retry order."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from quantroute.config import PickerName
from quantroute.core.model import RequestFeatures

Picker = Callable[[Mapping[str, float], RequestFeatures, float, random.Random], list[str]]


def best(
    scores: Mapping[str, float], _f: RequestFeatures, tol: float, rng: random.Random
) -> list[str]:
    """Best score; among near-ties (within ``tol`` of the best) take the better of two random picks."""
    ranked = sorted(scores, key=lambda k: (-scores[k], k))
    top = [k for k in ranked if scores[k] >= scores[ranked[0]] - tol]
    if len(top) >= 2:
        first, second = rng.sample(top, 2)
        chosen = first if scores[first] >= scores[second] else second
        ranked.remove(chosen)
        ranked.insert(0, chosen)
    return ranked


def round_robin(
    scores: Mapping[str, float], features: RequestFeatures, _t: float, _r: random.Random
) -> list[str]:
    ids = sorted(scores)
    start = features.sequence % len(ids)
    return ids[start:] + ids[:start]


REGISTRY: dict[PickerName, Picker] = {"best": best, "round_robin": round_robin}
