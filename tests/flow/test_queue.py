"""The flow-control queue's pure part: order, admission, eviction, deadlines (clock injected)."""

from __future__ import annotations

import pytest

from quantroute.flow.queue import FlowQueue
from quantroute.flow.settings import FlowControlConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def queue(clock: FakeClock, **settings: object) -> FlowQueue[str]:
    return FlowQueue(FlowControlConfig.model_validate(settings), clock)


def names(q: FlowQueue[str], group: str = "g") -> list[str]:
    return [t.item for t in q.waiting(group)]


def test_interactive_before_batch_then_key_priority_then_arrival() -> None:
    q = queue(FakeClock())
    q.admit("g", "batch-1", batch=True)
    q.admit("g", "inter-1", batch=False)
    q.admit("g", "batch-vip", batch=True, priority=5)
    q.admit("g", "inter-2", batch=False)
    q.admit("g", "inter-vip", batch=False, priority=3)
    q.admit("g", "inter-low", batch=False, priority=-1)
    assert names(q) == ["inter-vip", "inter-1", "inter-2", "inter-low", "batch-vip", "batch-1"]


def test_groups_are_separate_queues() -> None:
    q = queue(FakeClock(), max_queue_length=1)
    assert q.admit("g", "x", batch=False).ticket is not None
    assert q.admit("h", "y", batch=False).ticket is not None
    assert (q.depth("g"), q.depth("h"), len(q)) == (1, 1, 2)
    assert sorted(q.groups()) == ["g", "h"]


def test_a_full_queue_refuses_an_equal_or_lower_rank_at_once() -> None:
    q = queue(FakeClock(), max_queue_length=2)
    q.admit("g", "i1", batch=False)
    q.admit("g", "i2", batch=False)
    refused = q.admit("g", "i3", batch=False)
    assert refused.ticket is None and refused.evicted is None
    assert q.admit("g", "b1", batch=True).ticket is None
    assert names(q) == ["i1", "i2"]


def test_a_full_queue_evicts_its_lowest_for_a_request_that_outranks_it() -> None:
    q = queue(FakeClock(), max_queue_length=2)
    q.admit("g", "b-old", batch=True)
    q.admit("g", "b-new", batch=True)
    admitted = q.admit("g", "inter", batch=False)
    assert admitted.ticket is not None and admitted.evicted is not None
    assert admitted.evicted.item == "b-new"  # the lowest: the newest of the lowest class
    assert names(q) == ["inter", "b-old"]
    vip = q.admit("g", "b-vip", batch=True, priority=1)
    assert vip.evicted is not None and vip.evicted.item == "b-old"
    assert names(q) == ["inter", "b-vip"]


def test_deadline_remaining_and_expiry_follow_the_clock() -> None:
    clock = FakeClock()
    q = queue(clock, max_wait_s=2.0)
    first = q.admit("g", "first", batch=False).ticket
    clock.now += 1.5
    second = q.admit("g", "second", batch=False).ticket
    assert first is not None and second is not None
    assert first.deadline == 102.0 and q.remaining_s(first) == pytest.approx(0.5)
    assert q.waited_s(first) == pytest.approx(1.5) and q.expired() == []
    clock.now += 0.5
    assert q.expired() == [first] and q.remaining_s(first) == 0.0
    assert q.remaining_s(second) == pytest.approx(1.5)


def test_remove_is_idempotent_and_an_empty_group_goes_away() -> None:
    q = queue(FakeClock())
    ticket = q.admit("g", "x", batch=False).ticket
    assert ticket is not None
    assert q.remove(ticket) is True and q.remove(ticket) is False
    assert q.groups() == [] and len(q) == 0 and q.depth("g") == 0


def test_reconfigure_bounds_new_tickets_only() -> None:
    clock = FakeClock()
    q = queue(clock, max_wait_s=10.0)
    old = q.admit("g", "old", batch=False).ticket
    q.configure(FlowControlConfig(max_wait_s=1.0, max_queue_length=1))
    assert old is not None and old.deadline == 110.0
    assert q.admit("g", "new", batch=False).ticket is None  # the new length bound holds


def test_admin_view_counts_classes_and_the_oldest_wait() -> None:
    clock = FakeClock()
    q = queue(clock)
    q.admit("g", "b", batch=True)
    clock.now += 2.0
    q.admit("g", "i", batch=False)
    assert q.admin() == {"g": {"depth": 2, "interactive": 1, "batch": 1, "oldest_wait_s": 2.0}}


def test_settings_reject_unknown_keys_and_bad_values() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        FlowControlConfig.model_validate({"max_queue_lenght": 3})
    with pytest.raises(ValidationError):
        FlowControlConfig.model_validate({"on_saturation": "drop"})
    with pytest.raises(ValidationError):
        FlowControlConfig.model_validate({"reject_status": 500})
