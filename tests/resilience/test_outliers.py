"""The passive-health state machine, driven by a hand-held time: tables of outcomes -> states."""

from __future__ import annotations

from typing import Any

import pytest

from quantroute.resilience.outcomes import AttemptOutcome, classify_status, retry_after_seconds
from quantroute.resilience.outliers import EjectionReason, PassiveHealth
from quantroute.resilience.settings import OutlierDetection

F = AttemptOutcome.SERVER_ERROR
OK = AttemptOutcome.OK


def machine(
    backends: dict[str, str] | None = None,
    groups: dict[str, list[str]] | None = None,
    **settings: Any,
) -> PassiveHealth:
    backends = backends or {"a": "v", "b": "v", "c": "v"}
    groups = groups if groups is not None else {"auto": list(backends)}
    return PassiveHealth(OutlierDetection(**settings), backends, groups)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, AttemptOutcome.OK),
        (400, AttemptOutcome.CLIENT_ERROR),
        (404, AttemptOutcome.CLIENT_ERROR),
        (413, AttemptOutcome.CLIENT_ERROR),
        (429, AttemptOutcome.BACKPRESSURE),
        (500, AttemptOutcome.SERVER_ERROR),
        (502, AttemptOutcome.SERVER_ERROR),
        (503, AttemptOutcome.BACKPRESSURE),
        (504, AttemptOutcome.SERVER_ERROR),
    ],
)
def test_status_classification(status: int, outcome: AttemptOutcome) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize(
    ("header", "seconds"), [(None, None), ("3", 3.0), (" 1.5 ", 1.5), ("-1", None), ("soon", None)]
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


@pytest.mark.parametrize(
    ("outcomes", "ejected"),
    [
        ([F] * 4, False),
        ([F] * 5, True),
        ([F] * 4 + [OK] + [F] * 4, False),  # a success clears the streak
        ([F, AttemptOutcome.CLIENT_ERROR] * 5, True),  # 4xx neither counts nor clears
        ([AttemptOutcome.CLIENT_ERROR] * 100, False),  # a burst of bad requests never ejects
        ([AttemptOutcome.CLIENT_GONE] * 100, False),
        ([AttemptOutcome.BACKPRESSURE] * 100, False),  # 429/503 are backpressure, not breakage
        ([F, AttemptOutcome.BACKPRESSURE] * 5, True),
        (
            [
                AttemptOutcome.CONNECT_ERROR,
                AttemptOutcome.RESET,
                AttemptOutcome.TIMEOUT,
                F,
                AttemptOutcome.CONNECT_ERROR,
            ],
            True,
        ),
    ],
)
def test_consecutive_failures_eject(outcomes: list[AttemptOutcome], ejected: bool) -> None:
    health = machine()
    events = [health.record("a", o, now=float(i)) for i, o in enumerate(outcomes)]
    view = health.view("a", now=float(len(outcomes)))
    assert view.ejected is ejected
    assert [e.reason for e in events if e] == ([EjectionReason.CONSECUTIVE_FAILURES] * ejected)


@pytest.mark.parametrize(
    ("sent_at", "ejected"),
    [
        (0.5, True),  # sent before the first failure (t=1): its late success clears nothing
        (2.5, False),  # sent after the latest failure (t=2): the backend serves again
        (None, False),  # when it was sent is unknown: a success clears, as before
    ],
)
def test_a_success_clears_the_streak_only_if_sent_after_the_latest_failure(
    sent_at: float | None, ejected: bool
) -> None:
    health = machine(consecutive_failures=3)
    health.record("a", F, now=1.0)
    health.record("a", F, now=2.0)
    health.record("a", OK, now=3.0, sent_at=sent_at)
    event = health.record("a", F, now=4.0)
    assert (event is not None and not event.suppressed) is ejected
    assert health.view("a", now=4.0).ejected is ejected


def test_ejection_lasts_base_times_count_capped() -> None:
    health = machine(base_ejection_s=10, max_ejection_s=25, slow_start_s=0)
    durations = []
    now = 0.0
    for _ in range(4):
        event = None
        while event is None:
            event = health.record("a", F, now)
        durations.append(event.until - now)
        now = event.until  # back in service: fail again at once
    assert durations == [10, 20, 25, 25]
    assert health.view("a", now).ejections == 4


def test_ejection_count_decays_while_in_service() -> None:
    health = machine(base_ejection_s=10, slow_start_s=0)
    first = next(e for e in (health.record("a", F, 0.0) for _ in range(5)) if e)
    second = next(e for e in (health.record("a", F, first.until) for _ in range(5)) if e)
    assert second.count == 2 and second.until - first.until == 20
    # 25 s in service after the second ejection: the multiplier falls by two
    later = second.until + 25
    third = next(e for e in (health.record("a", F, later) for _ in range(5)) if e)
    assert third.count == 1 and third.until - later == 10


def test_failures_during_an_ejection_are_not_counted() -> None:
    health = machine(base_ejection_s=10, slow_start_s=0)
    for _ in range(5):
        health.record("a", F, 0.0)
    for _ in range(50):
        assert health.record("a", F, 5.0) is None
    assert health.view("a", 10.0).consecutive_failures == 0
    assert not health.view("a", 10.0).ejected


@pytest.mark.parametrize(
    ("size", "share", "ejectable"),
    [(1, 0.5, 0), (2, 0.5, 1), (3, 0.5, 1), (4, 0.5, 2), (3, 0.1, 1), (10, 0.3, 3), (3, 1.0, 2)],
)
def test_group_share_limits_ejections(size: int, share: float, ejectable: int) -> None:
    names = [f"b{i}" for i in range(size)]
    health = machine(dict.fromkeys(names, "v"), {"g": names}, max_ejection_share=share)
    suppressed = 0
    for name in names:
        for _ in range(5):
            event = health.record(name, F, 1.0)
            suppressed += bool(event and event.suppressed)
    assert sum(v.ejected for v in health.views(1.0).values()) == ejectable
    assert suppressed == size - ejectable


def test_the_strictest_group_of_a_backend_decides() -> None:
    backends = {"a": "v", "b": "v", "c": "w", "d": "w"}
    health = machine(backends, {"all": ["a", "b", "c", "d"], "pair": ["a", "b"]})
    for _ in range(5):
        health.record("b", F, 0.0)
    events = [health.record("a", F, 0.0) for _ in range(5)]
    assert events[-1] is not None and events[-1].suppressed  # "pair" would be empty
    assert not health.view("a", 0.0).ejected
    for _ in range(5):
        health.record("c", F, 0.0)
    assert health.view("c", 0.0).ejected  # "all" allows two of four


def test_backend_in_no_group_can_be_ejected() -> None:
    health = machine({"solo": "v"}, {})
    for _ in range(5):
        health.record("solo", F, 0.0)
    assert health.view("solo", 0.0).ejected


def test_probation_ramps_weight_and_one_failure_ejects_again() -> None:
    health = machine(base_ejection_s=10, slow_start_s=20, slow_start_min_weight=0.2)
    for _ in range(5):
        health.record("a", F, 0.0)
    assert health.view("a", 9.9).weight == 0.0
    ramp = [round(health.view("a", t).weight, 3) for t in (10.0, 15.0, 20.0, 30.0, 31.0)]
    assert ramp == [0.2, 0.4, 0.6, 1.0, 1.0]
    assert health.view("a", 12.0).on_probation and not health.view("a", 31.0).on_probation
    event = health.record("a", AttemptOutcome.TIMEOUT, 12.0)
    assert event is not None and event.reason is EjectionReason.PROBATION_FAILURE
    assert event.until == 12.0 + 20  # second ejection: base x 2


def test_recovered_backend_ramps_up_without_an_ejection() -> None:
    health = machine(slow_start_s=10, slow_start_min_weight=0.1)
    health.recovered("a", 100.0)
    assert [round(health.view("a", t).weight, 2) for t in (100.0, 105.0, 110.0)] == [0.1, 0.55, 1.0]
    assert health.view("a", 100.0).ejections == 0


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(None, 2.0), (5.0, 5.0), (500.0, 30.0), (0.0, 0.0)]
)
def test_backpressure_window(retry_after: float | None, expected: float) -> None:
    health = machine()
    health.record("a", AttemptOutcome.BACKPRESSURE, 10.0, retry_after_s=retry_after)
    view = health.view("a", 10.0)
    assert view.backpressure_for_s == expected and not view.ejected
    assert not health.view("a", 10.0 + expected).backpressure


def _latencies(health: PassiveHealth, samples: dict[str, float], n: int, **kw: Any) -> list[Any]:
    events = []
    for i in range(n):
        for backend_id, value in samples.items():
            events.append(health.record_latency(backend_id, float(i), **{kw["kind"]: value}))
    return [e for e in events if e]


@pytest.mark.parametrize(
    ("samples", "kind", "ejected"),
    [
        ({"a": 0.2, "b": 0.2, "c": 2.0}, "ttft_s", {"c"}),  # 10x slower: a throttled GPU
        ({"a": 0.2, "b": 0.2, "c": 0.5}, "ttft_s", set()),  # 2.5x: within the factor
        ({"a": 0.01, "b": 0.01, "c": 0.2}, "ttft_s", set()),  # 20x but under the floor
        ({"a": 0.02, "b": 0.02, "c": 0.08}, "per_token_s", {"c"}),  # decode 4x slower
        ({"a": 0.02, "b": 0.02, "c": 0.03}, "per_token_s", set()),
    ],
)
def test_latency_outliers_against_variant_peers(
    samples: dict[str, float], kind: str, ejected: set[str]
) -> None:
    health = machine(latency_min_samples=10)
    events = _latencies(health, samples, 30, kind=kind)
    assert {e.backend_id for e in events} == ejected
    assert all(e.reason is EjectionReason.LATENCY_OUTLIER for e in events)
    assert all(e.until - 9.0 == 60.0 for e in events)  # judged once ten samples are in


def test_latency_needs_peers_of_the_same_variant_and_enough_samples() -> None:
    health = machine({"a": "v", "b": "w"}, latency_min_samples=10)
    assert _latencies(health, {"a": 0.1, "b": 5.0}, 30, kind="ttft_s") == []
    health = machine(latency_min_samples=50)
    assert _latencies(health, {"a": 0.1, "b": 0.1, "c": 5.0}, 30, kind="ttft_s") == []


def test_latency_outlier_is_judged_afresh_after_its_cool_down() -> None:
    health = machine(latency_min_samples=5, latency_ejection_s=10, slow_start_s=0)
    events = _latencies(health, {"a": 0.1, "b": 0.1, "c": 3.0}, 10, kind="ttft_s")
    assert len(events) == 1
    back = events[0].until
    # Back in service and now fast: its old average was dropped, nothing holds against it.
    for i in range(10):
        for backend_id in "abc":
            assert health.record_latency(backend_id, back + i, ttft_s=0.1) is None
    assert health.view("c", back + 10).ttft_s == pytest.approx(0.1)


def test_disabled_detection_never_ejects() -> None:
    health = machine(enabled=False)
    for _ in range(100):
        assert health.record("a", F, 0.0) is None
    assert health.view("a", 0.0).weight == 1.0 and not health.view("a", 0.0).ejected


def test_topology_change_keeps_known_state_and_drops_removed() -> None:
    health = machine()
    for _ in range(5):
        health.record("a", F, 0.0)
    health.set_topology({"a": "v", "d": "v"}, {"auto": ["a", "d"]})
    assert health.view("a", 1.0).ejected
    assert set(health.views(1.0)) == {"a", "d"}
    health.set_topology({"a": "other-variant"}, {})
    assert not health.view("a", 1.0).ejected  # a different backend under the same id


def test_refusing_backend_is_ejected_past_the_group_share() -> None:
    health = machine(max_ejection_share=0.5)  # three backends: one may be ejected
    for _ in range(5):
        health.record("a", F, 0.0)
    events = [health.record("b", AttemptOutcome.CONNECT_ERROR, 0.0) for _ in range(5)]
    assert events[-1] is not None and not events[-1].suppressed
    assert health.view("a", 0.0).ejected and health.view("b", 0.0).ejected
    events = [health.record("c", F, 0.0) for _ in range(5)]
    assert events[-1] is not None and events[-1].suppressed  # 5xx: the share holds


def test_a_down_backend_does_not_hold_the_groups_ejection_slot() -> None:
    health = machine(max_ejection_share=0.5)  # three backends: one may be ejected
    for _ in range(5):
        health.record("b", AttemptOutcome.RESET, 0.0)  # b died: its streams broke off
    assert health.view("b", 0.0).ejected
    events = [health.record("c", F, 0.0) for _ in range(5)]
    assert events[-1] is not None and events[-1].suppressed  # b holds the slot
    health.set_down("b", True)  # its scrapes fail too: it holds no capacity
    event = health.record("c", F, 0.0)
    assert event is not None and not event.suppressed and health.view("c", 0.0).ejected
    assert not health.view("a", 0.0).ejected  # the last one serving is never ejected
    for _ in range(10):
        health.record("a", F, 0.0)
    assert not health.view("a", 0.0).ejected


def test_back_from_unreachable_ends_the_ejection_early() -> None:
    health = machine(base_ejection_s=30, slow_start_s=10)
    for _ in range(5):
        health.record("a", AttemptOutcome.CONNECT_ERROR, 0.0)
    health.set_down("a", True)  # its scrapes fail too
    for _ in range(5):
        health.record("b", F, 0.0)
    assert health.view("a", 5.0).ejected and health.view("b", 5.0).ejected
    health.recovered("a", 5.0)  # its scrapes succeed again: the process is back
    health.recovered("b", 5.0)  # b's 5xx are not refuted by a scrape
    assert not health.view("a", 5.0).ejected and health.view("a", 5.0).on_probation
    assert health.view("b", 5.0).ejected


@pytest.mark.parametrize(("gap", "suspect"), [(0.0, True), (0.2, True), (0.3, False)])
def test_a_failure_makes_a_backend_suspect_for_a_moment(gap: float, suspect: bool) -> None:
    health = machine(suspect_s=0.25)
    health.record("a", F, 10.0)
    assert health.view("a", 10.0 + gap).suspect is suspect
    health.record("a", OK, 10.1)
    assert not health.view("a", 10.1).suspect  # a success clears the streak


def test_a_backend_slower_because_busier_is_no_outlier() -> None:
    health = machine(latency_min_samples=5)
    events = []
    for i in range(20):
        events.append(health.record_latency("a", float(i), per_token_s=0.02, load=10))
        events.append(health.record_latency("b", float(i), per_token_s=0.02, load=10))
        events.append(health.record_latency("c", float(i), per_token_s=0.09, load=40))
    assert [e for e in events if e] == []  # 4x the load: slower is expected
    health = machine(latency_min_samples=5)
    for i in range(20):
        health.record_latency("a", float(i), per_token_s=0.02, load=10)
        health.record_latency("b", float(i), per_token_s=0.02, load=10)
        event = health.record_latency("c", float(i), per_token_s=0.09, load=12)
        if event:
            break
    assert event is not None and event.reason is EjectionReason.LATENCY_OUTLIER


def test_a_held_ejection_is_made_when_the_slot_holder_goes_down() -> None:
    """The soak's sequence: b dies and is ejected (its streams reset), c's failures find the
    group's one slot taken, then no traffic comes until long after b is marked down. c must be
    ejected when b goes down, not at its next failure (which came 25 s later in the soak)."""
    health = machine(max_ejection_share=0.5)  # three backends: one may be ejected
    for _ in range(5):
        health.record("b", AttemptOutcome.RESET, 10.0)
    events = [health.record("c", F, 10.5) for _ in range(5)]
    assert events[-1] is not None and events[-1].suppressed and health.holding
    assert not health.view("c", 12.0).ejected
    made = health.set_down("b", True, 12.6)  # its scrapes fail: it holds no share
    assert [(e.backend_id, e.reason, e.suppressed) for e in made] == [
        ("c", EjectionReason.CONSECUTIVE_FAILURES, False)
    ]
    view = health.view("c", 12.6)
    assert view.ejected and view.ejected_for_s == 30.0 and not health.holding
    assert not health.view("a", 12.6).ejected


def test_a_held_ejection_is_made_when_the_holders_ejection_ends() -> None:
    health = machine(max_ejection_share=0.5, base_ejection_s=30.0)
    for _ in range(5):
        health.record("b", F, 0.0)  # ejected until 30
    for _ in range(5):
        health.record("c", F, 26.0)  # held
    assert health.release_held(29.9) == [] and health.holding
    made = health.release_held(30.0)
    assert [e.backend_id for e in made] == ["c"] and health.view("c", 30.0).ejected
    assert not health.view("b", 30.0).ejected and health.view("b", 30.0).on_probation


def test_recovery_from_an_unreachable_ejection_makes_the_held_one() -> None:
    health = machine(max_ejection_share=0.5)
    for _ in range(5):
        health.record("b", AttemptOutcome.RESET, 0.0)
    for _ in range(5):
        health.record("c", F, 1.0)  # held: b holds the slot (it is not known down yet)
    made = health.recovered("b", 2.0)  # b's process is back before its scrapes ever failed
    assert [e.backend_id for e in made] == ["c"]
    assert not health.view("b", 2.0).ejected and health.view("c", 2.0).ejected


@pytest.mark.parametrize(
    ("between", "then", "made"),
    [
        (None, 12.0, True),
        (OK, 12.0, False),  # it served a request sent after its failures: nothing is owed
        (None, 10.5 + 5.0, True),
        # older than held_ejection_s: a backend that failed in a burst and serves again shows
        # it only when its streams end (the soak: b1 ejected 23 s after its connect timeouts)
        (None, 10.5 + 5.1, False),
    ],
)
def test_when_a_held_ejection_is_made_or_let_go(
    between: AttemptOutcome | None, then: float, made: bool
) -> None:
    health = machine(max_ejection_share=0.5, base_ejection_s=30.0, held_ejection_s=5.0)
    for _ in range(5):
        health.record("b", F, 10.0)
    for _ in range(5):
        health.record("c", F, 10.5)
    if between is not None:
        health.record("c", between, 11.0, sent_at=11.0)
    health.set_down("b", True, then)
    assert health.view("c", then).ejected is made
    assert not health.holding


def test_a_backend_back_up_does_not_release_what_it_takes_room_from() -> None:
    health = machine(max_ejection_share=0.5)
    health.set_down("b", True, 0.0)
    for _ in range(5):
        health.record("a", F, 1.0)  # ejected: two backends alive, one may go
    for _ in range(5):
        health.record("c", F, 1.0)  # held
    assert health.set_down("b", False, 2.0) == [] and health.holding
    assert not health.view("c", 2.0).ejected


def test_a_backend_known_down_is_ejected_on_its_own_failures() -> None:
    """The real-vLLM kill test's sequence on a loaded CPU: the victim's scrapes fail first (it is
    marked down), then its streams break. With two backends the group's share leaves no room,
    but ejecting a backend that serves nothing costs none, so it is ejected; the one backend
    still serving is not."""
    health = machine({"a": "v", "b": "v"}, consecutive_failures=2, max_ejection_share=0.5)
    health.set_down("a", True, 0.0)
    events = [health.record("a", F, 1.0) for _ in range(2)]
    assert events[0] is None
    assert events[1] is not None and not events[1].suppressed
    assert health.view("a", 1.0).ejected and health.view("a", 1.0).ejections == 1
    assert not health.holding
    for _ in range(5):
        health.record("b", F, 1.0)
    assert not health.view("b", 1.0).ejected  # the one backend serving is never ejected
