"""Measured latency over real HTTP: a replica measurably slower than its same-variant twin (same
prior) loses its share of traffic once the gateway has observed it, and ``/admin/backends`` and
``POST /v1/route/explain`` show the measured figures and how much they count."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from quantroute.testing.fake_backend import FakeState, wait_until

from .conftest import Fleet, FleetFactory

SLOW_HEADERS_S = 1.0
"""The slow twin holds its answer's headers this long: a time to first token five times the prior
(200 ms without a matrix), far above the fast twin's loopback overhead however loaded the
machine is (the fast twin would need a whole second more on average to look as slow)."""
TWINS = {
    "fast": FakeState(served_model_name="twin"),
    "slow": FakeState(served_model_name="twin", header_delay_s=SLOW_HEADERS_S),
}
SAME_VARIANT = {"fast": {"variant": "v"}, "slow": {"variant": "v"}}


def twins(make_fleet: FleetFactory, **policy: Any) -> Fleet:
    return make_fleet(
        TWINS,
        policy={"tie_tolerance": 0.0, **policy},
        backend_overrides=SAME_VARIANT,
        groups=[{"name": "auto", "variants": ["v"]}],
        # The latency-outlier rule would eject the slow twin in time; here it is kept in so
        # that the scores alone shift its traffic (the measurement is kept with the rule off).
        resilience={"outlier_detection": {"latency_outliers": False}},
    )


def stream(fleet: Fleet, model: str) -> None:
    chunks = fleet.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    assert [c for c in chunks]


def explain(fleet: Fleet) -> dict[str, dict[str, Any]]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = httpx.post(fleet.url + "/v1/route/explain", json=body, timeout=10)
    assert r.status_code == 200
    return {c["backend"]: c for c in r.json()["candidates"]}


def samples(fleet: Fleet) -> dict[str, int]:
    return {k: row["latency"]["ttft_samples"] for k, row in fleet.admin().items()}


def served(fleet: Fleet) -> dict[str, int]:
    return {k: len(b.state.received) for k, b in fleet.backends.items()}


@pytest.mark.timeout(120)
def test_a_measurably_slower_twin_loses_its_share_once_observed(make_fleet: FleetFactory) -> None:
    fleet = twins(make_fleet)
    before = explain(fleet)
    assert before["fast"]["score"] == before["slow"]["score"]  # same prior, same load: a tie
    for c in before.values():
        assert c["latency"]["weight"] == 0.0
        assert c["latency"]["ttft_ms"] == c["latency"]["prior_ttft_ms"]

    for _ in range(4):  # each twin by its own id: both observed alike
        stream(fleet, "fast")
        stream(fleet, "slow")
    # An attempt reports its latencies as it ends, just after the client saw the last byte.
    assert wait_until(lambda: samples(fleet) == {"fast": 4, "slow": 4}, 10), samples(fleet)
    admin = fleet.admin()
    slow, fast = admin["slow"]["latency"], admin["fast"]["latency"]
    assert slow["ttft_s"] >= SLOW_HEADERS_S
    # Four samples each (their weight ages by half every 120 s: a second apart, about alike).
    assert 0.0 < slow["weight"] == pytest.approx(fast["weight"], rel=0.05)
    assert slow["weight"] < 1.0
    assert slow["queue_factor"] > 1.0  # 1 s against a 0.2 s prior
    assert slow["queue_factor"] > fast["queue_factor"]
    assert admin["slow"]["passive_health"]["ttft_s"] == slow["ttft_s"]  # one measurement

    after = explain(fleet)
    assert after["slow"]["latency"]["weight"] == pytest.approx(slow["weight"], rel=0.05)
    assert after["slow"]["latency"]["ttft_ms"] > after["fast"]["latency"]["ttft_ms"]
    assert after["slow"]["scores"]["latency"] < after["fast"]["scores"]["latency"]
    assert after["slow"]["score"] < after["fast"]["score"]

    start = served(fleet)
    for _ in range(12):
        stream(fleet, "auto")
    end = served(fleet)
    share = {k: end[k] - start[k] for k in end}
    assert share == {"fast": 12, "slow": 0}, share


@pytest.mark.timeout(120)
def test_with_measured_latency_off_the_twins_stay_tied(make_fleet: FleetFactory) -> None:
    """The control: the same observations, ignored by the scorer (shown, weight 0)."""
    fleet = twins(make_fleet, measured_latency=False)
    for _ in range(2):
        stream(fleet, "fast")
        stream(fleet, "slow")
    assert wait_until(lambda: samples(fleet) == {"fast": 2, "slow": 2}, 10), samples(fleet)
    admin = fleet.admin()
    assert admin["slow"]["latency"]["ttft_s"] >= SLOW_HEADERS_S
    assert admin["slow"]["latency"]["weight"] == 0.0
    after = explain(fleet)
    assert after["slow"]["latency"]["ttft_ms"] == after["slow"]["latency"]["prior_ttft_ms"]

    def tied() -> bool:  # once a scrape shows both idle again (one may still count a request)
        c = explain(fleet)
        return bool(c["slow"]["scores"]["latency"] == c["fast"]["scores"]["latency"])

    assert wait_until(tied, 10)
