"""``quantroute serve`` takes what start-up built out of the cyclic collector's reach and
collects the young generation less often (:func:`quantroute.resilience.memory.tune_gc`)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from quantroute.resilience.memory import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored")
def test_start_up_objects_are_frozen_and_the_young_generation_waits_longer() -> None:
    built_at_start_up = [{"config": i} for i in range(1000)]
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default: collected more often
    assert gc.get_freeze_count() >= len(built_at_start_up)


@pytest.mark.usefixtures("restored")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    tune_gc()

    class Node:
        def __init__(self) -> None:
            self.me = self

    node = Node()
    gone = weakref.ref(node)
    del node
    gc.collect()
    assert gone() is None
