"""No backend has fresh metrics: fail open (serve on the gateway's own account) or fail closed."""

from __future__ import annotations

from collections import Counter

import httpx

from quantroute.testing.fake_backend import FakeState, wait_until

from .conftest import Fleet, FleetFactory


def outage(make_fleet: FleetFactory, mode: str) -> Fleet:
    fleet = make_fleet(
        {"a": FakeState(served_model_name="m"), "b": FakeState(served_model_name="m")},
        policy={"metrics_outage": mode, "down_after_failures": 2},
    )
    for fake in fleet.fakes.values():
        fake.state.metrics_status = 500  # a Prometheus-format outage on the metrics port
    assert wait_until(lambda: all(r["state"] == "down" for r in fleet.admin().values()))
    return fleet


def test_fail_open_serves_with_an_even_spread_and_stays_ready(make_fleet: FleetFactory) -> None:
    fleet = outage(make_fleet, "fail_open")
    picks = Counter(fleet.post({}).headers["x-quantroute-backend"] for _ in range(20))
    assert set(picks) == {"a", "b"} and min(picks.values()) >= 5, picks
    ready = httpx.get(fleet.url + "/ready")
    assert ready.status_code == 200 and ready.json()["metrics_outage"] is True
    fleet.assert_no_leaks()


def test_fail_open_still_ejects_a_dead_backend(make_fleet: FleetFactory) -> None:
    fleet = outage(make_fleet, "fail_open")
    fleet.servers["a"].stop()
    # After each failure `a` is only suspect for a moment (suspect_s, wall time), so how many
    # requests its ejection takes depends on how fast they come: send until it is ejected.
    statuses: Counter[int] = Counter()
    for _ in range(400):
        statuses[fleet.post({}).status_code] += 1
        if fleet.admin()["a"]["passive_health"]["ejected"]:
            break
    assert set(statuses) == {200}, statuses  # connect errors are retried on b
    assert fleet.admin()["a"]["passive_health"]["ejected"]


def test_fail_closed_refuses_with_retry_after_but_the_replica_is_ready(
    make_fleet: FleetFactory,
) -> None:
    fleet = outage(make_fleet, "fail_closed")
    r = fleet.post({})
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["error"]["code"] == "no_backend_available"
    assert httpx.get(fleet.url + "/ready").status_code == 200
    fleet.assert_no_leaks()
