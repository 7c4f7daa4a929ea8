"""Quotas counted in memory and in a real Redis: exact admission, token correction, leases,
two replicas sharing one Redis, and what happens when Redis is down or hangs.

The quotas read a hand-driven clock: it ends the in-memory windows and the time Redis is
skipped after an error. Redis's own windows end by key TTLs (its clock), waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from quantroute.access.config import QuotaConfig, QuotaLimits
from quantroute.access.counters import MemoryCounters, RedisCounters
from quantroute.access.errors import QuotaUnavailable, RateLimited
from quantroute.access.keys import Principal
from quantroute.access.metrics import AccessMetrics
from quantroute.access.quotas import Quotas, duration
from quantroute.testing.redis_server import RedisServer

Make = Callable[..., Awaitable[Quotas]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def key(name: str = "team", **limits: int) -> Principal:
    return Principal(name, False, frozenset({"*"}), QuotaLimits(**limits))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make(clock: Clock) -> AsyncIterator[Make]:
    made: list[Quotas] = []

    async def factory(**config: Any) -> Quotas:
        quotas = Quotas(
            QuotaConfig(**config),
            AccessMetrics(CollectorRegistry()),
            lease_ttl_s=30.0,
            clock=clock,
        )
        made.append(quotas)
        await quotas.start()
        return quotas

    yield factory
    for quotas in made:
        await quotas.aclose()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config of the counters' store: this process's memory, or the module's real Redis."""
    if request.param == "memory":
        return {}
    # Tests of what is counted get a generous bound on Redis calls (this machine is shared and
    # loaded); the tests of the bound itself set their own.
    return {"redis_url": request.getfixturevalue("redis_url"), "redis_timeout_s": 2.0}


async def admitted(quotas: Quotas, principal: Principal, n: int, tokens: int = 1) -> int:
    ok = 0
    for _ in range(n):
        try:
            await quotas.admit(principal, tokens)
            ok += 1
        except RateLimited:
            pass
    return ok


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.02, "20ms"), (1.5, "1.5s"), (360, "6m0s"), (75.25, "1m15.25s")]
)
def test_reset_durations_in_openai_format(seconds: float, text: str) -> None:
    assert duration(seconds) == text


async def test_requests_per_window_admit_exactly_the_limit(
    make: Make, store: dict[str, Any]
) -> None:
    quotas = await make(**store)
    principal = key(requests_per_minute=7)
    assert await admitted(quotas, principal, 20) == 7
    with pytest.raises(RateLimited) as refused:
        await quotas.admit(principal, 1)
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    headers = refused.value.headers()
    assert headers["x-ratelimit-limit-requests"] == "7"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["Retry-After"] == "60"  # the clock has not moved since the window opened
    assert headers["x-ratelimit-reset-requests"] == "1m0s"


async def test_headers_count_down(make: Make, store: dict[str, Any]) -> None:
    quotas = await make(**store)
    principal = key(requests_per_minute=5, tokens_per_minute=1000)
    first = await quotas.admit(principal, 100)
    second = await quotas.admit(principal, 50)
    assert first is not None and second is not None
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert first.headers["x-ratelimit-remaining-tokens"] == "900"
    assert second.headers["x-ratelimit-remaining-requests"] == "3"
    assert second.headers["x-ratelimit-remaining-tokens"] == "850"
    assert second.headers["x-ratelimit-limit-tokens"] == "1000"
    peeked = await quotas.peek(principal)
    assert peeked["x-ratelimit-remaining-tokens"] == "850"


async def test_a_key_without_limits_is_not_counted(make: Make, store: dict[str, Any]) -> None:
    quotas = await make(**store)
    assert await quotas.admit(key(), 10**9) is None
    assert await quotas.peek(key()) == {}


async def test_tokens_are_corrected_with_the_real_usage(make: Make, store: dict[str, Any]) -> None:
    quotas = await make(**store)
    principal = key(tokens_per_minute=1000)
    admission = await quotas.admit(principal, 100)
    await quotas.finish(admission, 400)  # 100 prompt estimated, 400 used in the end
    peeked = await quotas.peek(principal)
    assert peeked["x-ratelimit-remaining-tokens"] == "600"
    # a usage above the limit is recorded anyway: the next requests pay for it
    admission = await quotas.admit(principal, 100)
    await quotas.finish(admission, 900)
    assert (await quotas.peek(principal))["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited) as refused:
        await quotas.admit(principal, 1)
    assert refused.value.error_type == "tokens"


async def test_an_overestimate_is_given_back_and_no_usage_keeps_the_estimate(
    make: Make, store: dict[str, Any]
) -> None:
    quotas = await make(**store)
    principal = key(tokens_per_minute=1000)
    await quotas.finish(await quotas.admit(principal, 300), 120)
    assert (await quotas.peek(principal))["x-ratelimit-remaining-tokens"] == "880"
    await quotas.finish(await quotas.admit(principal, 80), None)
    assert (await quotas.peek(principal))["x-ratelimit-remaining-tokens"] == "800"


async def test_a_refused_request_costs_nothing(make: Make, store: dict[str, Any]) -> None:
    quotas = await make(**store)
    principal = key(requests_per_minute=10, tokens_per_minute=100)
    await quotas.admit(principal, 90)
    with pytest.raises(RateLimited) as refused:
        await quotas.admit(principal, 20)
    assert refused.value.headers()["x-ratelimit-remaining-tokens"] == "10"
    after = await quotas.peek(principal)
    assert after["x-ratelimit-remaining-requests"] == "9"
    assert after["x-ratelimit-remaining-tokens"] == "10"
    assert await quotas.admit(principal, 10) is not None


def counters_of(quotas: Quotas) -> MemoryCounters | RedisCounters:
    counters = quotas._redis if quotas.shared else quotas._local
    assert counters is not None
    return counters


async def end_the_windows(quotas: Quotas, clock: Clock, *keys: str) -> None:
    """Fault: ``keys``' windows end now. In memory the clock passes every window's end; on Redis
    the keys go, as when their TTLs run out."""
    counters = counters_of(quotas)
    if isinstance(counters, RedisCounters):
        await counters.client.delete(*(counters._key(k) for k in keys))
    else:
        clock.now += quotas.config.window_s


def end_the_windows_after_a_count_over(quotas: Quotas, clock: Clock, limit: int) -> None:
    """Fault, once: the windows end between a request's count over ``limit`` and its refund (on
    Redis the keys' TTLs running out in that round trip; it happened in CI while a test polled
    for a new window)."""
    counters = counters_of(quotas)
    count = counters.incr
    fired: list[str] = []

    async def incr(key: str, window_s: int, amount: int) -> int:
        counted = await count(key, window_s, amount)
        if key.startswith("rpm:") and counted > limit and not fired:
            fired.append(key)
            name = key.removeprefix("rpm:")
            await end_the_windows(quotas, clock, f"rpm:{name}", f"tpm:{name}")
        return counted

    counters.incr = incr  # type: ignore[method-assign]


async def test_a_refund_after_its_window_ended_opens_no_window(
    make: Make, store: dict[str, Any], clock: Clock
) -> None:
    """A refused request's refund that arrives after its window ended must not open the next
    window in debt: with a negative increment it did (the count at -1), and the next window let
    one request more than the limit through."""
    quotas = await make(**store)
    principal = key(requests_per_minute=2, tokens_per_minute=1000)
    assert await admitted(quotas, principal, 2) == 2
    end_the_windows_after_a_count_over(quotas, clock, 2)
    with pytest.raises(RateLimited):
        await quotas.admit(principal, 1)
    assert await admitted(quotas, principal, 5) == 2
    assert (await quotas.peek(principal))["x-ratelimit-remaining-tokens"] == "998"


async def test_taking_back_keeps_the_window_and_stops_at_zero(redis_url: str) -> None:
    """On the stores themselves: a take-back leaves the window's end where it was (in memory its
    end, on Redis the key keeps its expiry), never goes below zero, and leaves an ended (absent)
    window absent."""
    clock = Clock()
    memory = MemoryCounters(clock)
    redis = RedisCounters(redis_url, timeout_s=2.0, prefix="take-back-test")

    async def take_back(counters: MemoryCounters | RedisCounters) -> None:
        assert await counters.incr("k", 60, 5) == 5
        assert await counters.take_back("k", 2) == 2
        assert await counters.take_back("k", 9) == 3  # only what is there
        assert await counters.get("k") == 0
        assert await counters.take_back("gone", 4) == 0
        assert await counters.get("gone") == 0

    try:
        end = clock.now + 60
        await take_back(memory)
        assert await memory.window_end("k") == end
        await take_back(redis)
        assert 0 < await redis.client.pttl("take-back-test:k") <= 60_000
        assert await redis.client.exists("take-back-test:gone") == 0
    finally:
        await redis.client.delete("take-back-test:k")
        await redis.aclose()


async def test_a_late_token_correction_opens_no_window(
    make: Make, store: dict[str, Any], clock: Clock
) -> None:
    """An overestimate given back after its window ended is dropped, not carried into the next
    window as a negative count."""
    quotas = await make(**store)
    principal = key(tokens_per_minute=1000)
    admission = await quotas.admit(principal, 600)
    assert admission is not None
    await end_the_windows(quotas, clock, f"tpm:{principal.name}")
    await quotas.finish(admission, 100)  # the window is gone: nothing to give back into
    assert (await quotas.peek(principal))["x-ratelimit-remaining-tokens"] == "1000"
    await quotas.finish(await quotas.admit(principal, 700), None)
    assert (await quotas.peek(principal))["x-ratelimit-remaining-tokens"] == "300"


async def test_a_prompt_larger_than_the_limit_is_refused_as_too_large(
    make: Make, store: dict[str, Any]
) -> None:
    quotas = await make(**store)
    with pytest.raises(RateLimited, match="Request too large"):
        await quotas.admit(key(tokens_per_minute=100), 101)


async def test_concurrent_requests_are_leases(make: Make, store: dict[str, Any]) -> None:
    quotas = await make(**store)
    principal = key(concurrent_requests=2, requests_per_minute=100)
    a = await quotas.admit(principal, 1)
    b = await quotas.admit(principal, 1)
    with pytest.raises(RateLimited, match="concurrent"):
        await quotas.admit(principal, 1)
    assert await quotas.held(principal) == 2
    await quotas.finish(a, 1)
    await quotas.finish(a, 1)  # settling twice releases once
    c = await quotas.admit(principal, 1)
    assert await quotas.held(principal) == 2
    await quotas.finish(b, 1)
    await quotas.finish(c, 1)
    assert await quotas.held(principal) == 0
    # the refused one was given back: 3 admitted
    assert (await quotas.peek(principal))["x-ratelimit-remaining-requests"] == "97"


async def test_the_window_resets(make: Make, clock: Clock) -> None:
    quotas = await make(window_s=10)
    principal = key(requests_per_minute=3)
    assert await admitted(quotas, principal, 5) == 3
    clock.now += 9.999
    assert await admitted(quotas, principal, 1) == 0
    with pytest.raises(RateLimited) as refused:
        await quotas.admit(principal, 1)
    assert refused.value.headers()["x-ratelimit-reset-requests"] == "1ms"
    clock.now += 0.001
    assert await admitted(quotas, principal, 5) == 3
    clock.now += 10
    assert (await quotas.peek(principal))["x-ratelimit-remaining-requests"] == "3"


async def test_a_redis_window_ends_with_its_key(make: Make, redis_url: str) -> None:
    """Redis ends a window by its key's TTL, on Redis's clock: waited for, within a bound. The
    window is 2 s and the new one is read in one call, so what is checked in one window fits in
    it with room on a loaded machine (with 1 s and five more calls, a stall while two CI runs
    shared the machine let the new window end mid-check)."""
    quotas = await make(window_s=2, redis_url=redis_url, redis_timeout_s=2.0)
    principal = key(requests_per_minute=3)
    assert await admitted(quotas, principal, 5) == 3
    deadline = time.monotonic() + 10
    while await admitted(quotas, principal, 1) == 0:
        assert time.monotonic() < deadline, "the window never reset"
        await asyncio.sleep(0.05)
    # the one request just admitted opened a new window: its count starts again from 1
    assert (await quotas.peek(principal))["x-ratelimit-remaining-requests"] == "2"


async def test_two_replicas_share_one_redis(make: Make, redis_url: str) -> None:
    one = await make(redis_url=redis_url, redis_timeout_s=2.0)
    two = await make(redis_url=redis_url, redis_timeout_s=2.0)
    principal = key(requests_per_minute=10, tokens_per_minute=10_000, concurrent_requests=3)
    results = await asyncio.gather(
        *(admitted(q, principal, 1) for q in (one, two) * 10), return_exceptions=True
    )
    assert sum(r for r in results if isinstance(r, int)) == 3  # the lease limit binds first
    assert await one.held(principal) == 3 and await two.held(principal) == 3


async def test_two_replicas_share_requests_and_tokens(make: Make, redis_url: str) -> None:
    one = await make(redis_url=redis_url, redis_timeout_s=2.0)
    two = await make(redis_url=redis_url, redis_timeout_s=2.0)
    principal = key(requests_per_minute=12, tokens_per_minute=10_000)
    counts = await asyncio.gather(admitted(one, principal, 10), admitted(two, principal, 10))
    assert sum(counts) == 12 and min(counts) > 0
    other = key("other", tokens_per_minute=500)
    await one.finish(await one.admit(other, 100), 450)
    assert (await two.peek(other))["x-ratelimit-remaining-tokens"] == "50"


def value(metric: Counter | Gauge) -> float:
    """The value of an unlabelled series, as a scrape would read it."""
    (family,) = metric.collect()
    return family.samples[0].value


def degraded(quotas: Quotas) -> float:
    return value(quotas.metrics.degraded)


async def test_redis_down_counts_locally_with_a_metric_and_a_log_line(
    make: Make, own_redis: RedisServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    quotas = await make(redis_url=own_redis.url, redis_retry_s=30)
    principal = key(requests_per_minute=4)
    assert await admitted(quotas, principal, 2) == 2
    own_redis.stop()
    with caplog.at_level(logging.INFO, logger="quantroute.access"):
        assert await admitted(quotas, principal, 6) == 4  # a fresh local window, same limit
    assert degraded(quotas) == 1
    assert value(quotas.metrics.store_errors) == 1  # then skipped, not retried per request
    assert "quota store unreachable" in caplog.text and "counting per replica" in caplog.text
    clock.now += 29.9
    assert await admitted(quotas, principal, 1) == 0  # still skipped: the local window is full
    assert value(quotas.metrics.store_errors) == 1
    clock.now += 0.1  # redis_retry_s has passed: Redis is tried again (and is still down)
    assert await admitted(quotas, principal, 1) == 0
    assert value(quotas.metrics.store_errors) == 2 and degraded(quotas) == 1


async def test_redis_down_with_refuse_answers_503(
    make: Make, own_redis: RedisServer, clock: Clock
) -> None:
    quotas = await make(redis_url=own_redis.url, on_redis_error="refuse", redis_retry_s=3)
    own_redis.stop()
    with pytest.raises(QuotaUnavailable) as refused:
        await quotas.admit(key(requests_per_minute=4), 1)
    assert refused.value.status == 503
    assert refused.value.headers()["Retry-After"] == "3"
    clock.now += 2.5
    with pytest.raises(QuotaUnavailable) as refused:  # skipped now: refused without trying Redis
        await quotas.admit(key(requests_per_minute=4), 1)
    assert refused.value.headers()["Retry-After"] == "1"
    assert value(quotas.metrics.store_errors) == 1


async def test_a_hanging_redis_is_given_up_after_one_timeout_then_skipped(
    make: Make, own_redis: RedisServer
) -> None:
    quotas = await make(redis_url=own_redis.url, redis_timeout_s=0.2, redis_retry_s=60)
    principal = key(requests_per_minute=100, concurrent_requests=5)
    first = await quotas.admit(principal, 1)
    own_redis.pause()
    try:
        # the guard only turns a hang into a failure; the 0.2 s bound is what ends the wait
        async with asyncio.timeout(30):
            await quotas.finish(first, 1)  # the release times out; the lease expires by itself
            assert value(quotas.metrics.store_errors) == 1 and degraded(quotas) == 1
            admission = await quotas.admit(principal, 1)
    finally:
        own_redis.resume()
    assert admission is not None
    assert value(quotas.metrics.store_errors) == 1  # Redis skipped: the admit did not wait
    assert await quotas.held(principal) == 1  # counted in this replica's memory


async def test_redis_coming_back_is_used_again(
    make: Make, own_redis: RedisServer, clock: Clock
) -> None:
    quotas = await make(redis_url=own_redis.url, redis_timeout_s=0.2, redis_retry_s=30)
    principal = key(requests_per_minute=100)
    own_redis.pause()
    try:
        await quotas.admit(principal, 1)
        assert degraded(quotas) == 1
    finally:
        own_redis.resume()
    clock.now += 29.9
    await quotas.admit(principal, 1)
    assert degraded(quotas) == 1  # still skipped, though Redis answers again
    assert value(quotas.metrics.store_errors) == 1
    clock.now += 0.1
    await quotas.admit(principal, 1)
    assert degraded(quotas) == 0
