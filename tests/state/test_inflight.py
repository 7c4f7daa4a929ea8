"""The in-flight account on its own: figures kept up to date lease by lease, released once."""

from __future__ import annotations

from quantroute.state.inflight import BackendLoad, InFlight


def test_the_account_follows_leases_scrapes_and_releases() -> None:
    now = [10.0]
    inflight = InFlight(lambda: now[0])
    first = inflight.begin("a", kv_tokens=500, prompt_tokens=400)
    now[0] = 11.0
    second = inflight.begin("a", kv_tokens=300, prompt_tokens=200)
    other = inflight.begin("b", kv_tokens=50, prompt_tokens=10)
    assert inflight.loads() == {"a": BackendLoad(2, 2, 800, 600), "b": BackendLoad(1, 1, 50, 10)}
    now[0] = 12.5
    first.first_byte()
    now[0] = 13.0
    first.first_byte()  # counted once, timed once
    assert inflight.loads()["a"] == BackendLoad(2, 2, 800, 200)
    assert first.first_byte_at == 12.5
    inflight.scraped("a", started_at=10.5)  # saw the first, not the second
    assert inflight.loads()["a"] == BackendLoad(2, 1, 300, 200)
    second.release()
    second.release()  # idempotent
    assert inflight.loads()["a"] == BackendLoad(1, 0, 0, 0)
    assert second.first_byte_at is None  # ended before its first byte: leaves the backlog untimed
    first.release()
    other.release()
    assert inflight.loads() == {"a": BackendLoad(), "b": BackendLoad()}
    assert inflight.total() == 0 and inflight.dispatched == {"a": 2, "b": 1}
    inflight.scraped("unknown", started_at=0.0)  # a backend never dispatched to: nothing to do
