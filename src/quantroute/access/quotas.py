"""Per-key quotas: requests and tokens per window, concurrent requests.

``admit`` counts a request before it is forwarded (tokens: the prompt estimate) and refuses it
with 429 when a limit would be passed; ``finish`` releases its concurrency lease and corrects the
token count with the real usage when the response ends (added even when it passes the limit: the
next requests pay for it; a lower real count is given back while the window lasts). Counting is
fixed-window (see :mod:`quantroute.access.counters`): a window starts at its first request and
admits exactly the limit; a client can burst up to twice the limit across a window boundary.

Redis, when configured, is called with a bound on each step; after an error it is skipped for
``redis_retry_s`` and the counts go to this replica's memory (``on_redis_error: local``, a log
line and ``quantroute_quota_degraded``) or requests are refused with 503 (``refuse``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from quantroute.access.config import QuotaConfig, QuotaLimits
from quantroute.access.counters import Counters, MemoryCounters, RedisCounters
from quantroute.access.errors import QuotaUnavailable, RateLimited
from quantroute.access.keys import Principal
from quantroute.access.metrics import AccessMetrics
from quantroute.base import Clock

log = logging.getLogger("quantroute.access")
T = TypeVar("T")


def duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: ``20ms``, ``1.5s``, ``6m0s`` (to the millisecond)."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{max(0, ms)}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    whole, frac = divmod(rest_ms, 1000)
    text = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s" if frac else f"{whole}s"
    return f"{minutes}m{text}" if minutes else text


@dataclass(frozen=True, slots=True)
class _Counts:
    requests: int | None
    tokens: int | None
    requests_end: float
    tokens_end: float


def _headers(limits: QuotaLimits, counts: _Counts, now: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    if limits.requests_per_minute is not None and counts.requests is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(
            max(0, limits.requests_per_minute - counts.requests)
        )
        headers["x-ratelimit-reset-requests"] = duration(counts.requests_end - now)
    if limits.tokens_per_minute is not None and counts.tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(limits.tokens_per_minute)
        headers["x-ratelimit-remaining-tokens"] = str(
            max(0, limits.tokens_per_minute - counts.tokens)
        )
        headers["x-ratelimit-reset-tokens"] = duration(counts.tokens_end - now)
    return headers


@dataclass
class Admission:
    """One admitted request's charges, to be settled by :meth:`Quotas.finish` exactly once."""

    principal: Principal
    counters: Counters
    estimate: int
    tokens_end: float
    lease: str | None
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


class Quotas:
    def __init__(
        self,
        config: QuotaConfig,
        metrics: AccessMetrics,
        *,
        lease_ttl_s: float,
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._local = MemoryCounters(clock)
        self._redis: RedisCounters | None = None
        self._store_errors: tuple[type[BaseException], ...] = (
            TimeoutError,
            OSError,
            ConnectionError,
        )
        if config.redis_url is not None:
            # imported only with Redis: the client's import pulls in much (the OpenTelemetry
            # SDK's metrics too, where it is installed), for nothing without it
            from redis.exceptions import RedisError

            self._redis = RedisCounters(
                config.redis_url,
                timeout_s=config.redis_timeout_s,
                prefix=config.key_prefix,
                clock=clock,
            )
            self._store_errors += (RedisError,)
        self._skip_until = 0.0
        self._degraded = False
        self._ends: dict[tuple[int, str], float] = {}
        self._replica = uuid.uuid4().hex[:12]
        self._seq = itertools.count()

    @property
    def shared(self) -> bool:
        return self._redis is not None

    @property
    def degraded(self) -> bool:
        """Redis is configured but being skipped after an error."""
        return self._degraded

    async def start(self) -> None:
        """Warm the Redis connection up (a failure only logs: requests then fall back)."""
        if self._redis is None:
            return
        try:
            async with asyncio.timeout(max(2.0, self.config.redis_timeout_s)):
                await self._redis.warm_up()
        except self._store_errors as exc:
            self._failed(exc)

    async def aclose(self) -> None:
        await self._local.aclose()
        if self._redis is not None:
            await self._redis.aclose()

    # -- which store ---------------------------------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        self.metrics.store_errors.inc()
        self._skip_until = self._clock() + self.config.redis_retry_s
        if not self._degraded:
            self._degraded = True
            self.metrics.degraded.set(1)
            mode = (
                "counting per replica"
                if self.config.on_redis_error == "local"
                else "refusing requests"
            )
            log.warning(
                "quota store unreachable (%s); %s for %.0f s before retrying Redis",
                type(exc).__name__,
                mode,
                self.config.redis_retry_s,
            )

    def _recovered(self) -> None:
        self._degraded = False
        self.metrics.degraded.set(0)
        log.info("quota store reachable again: counting in Redis")

    async def _bounded(self, store: Counters, op: Callable[[Counters], Awaitable[T]]) -> T:
        if store is self._local:
            return await op(store)
        async with asyncio.timeout(self.config.redis_timeout_s):
            return await op(store)

    async def _run(self, op: Callable[[Counters], Awaitable[T]]) -> tuple[T, Counters]:
        """Run ``op`` on Redis when configured and not skipped, else on the local counters."""
        redis = self._redis
        if redis is not None and self._clock() >= self._skip_until:
            try:
                result = await self._bounded(redis, op)
            except self._store_errors as exc:
                self._failed(exc)
            else:
                if self._degraded:
                    self._recovered()
                return result, redis
        if redis is not None and self.config.on_redis_error == "refuse":
            raise QuotaUnavailable(math.ceil(max(1.0, self._skip_until - self._clock())))
        return await op(self._local), self._local

    async def _pair(
        self, store: Counters, a: Awaitable[int] | None, b: Awaitable[int] | None
    ) -> tuple[int | None, int | None]:
        """Both counter calls: concurrently on Redis (two round trips in parallel), one after
        the other in memory (no I/O, and no tasks to create)."""
        if a is not None and b is not None and store is not self._local:
            x, y = await asyncio.gather(a, b)
            return x, y
        return (await a if a is not None else None), (await b if b is not None else None)

    # -- windows -------------------------------------------------------------------------------
    async def _end(self, store: Counters, key: str, count: int, amount: int, now: float) -> float:
        """The end of ``key``'s window: known when this call opened it, else cached or asked."""
        slot = (id(store), key)
        if count == amount:
            end = now + self.config.window_s
        else:
            end = self._ends.get(slot, 0.0)
            if end <= now:
                end = await store.window_end(key)
        self._ends[slot] = end
        return end

    def _keys(self, principal: Principal) -> tuple[str, str, str]:
        return f"rpm:{principal.name}", f"tpm:{principal.name}", f"conc:{principal.name}"

    # -- admission -----------------------------------------------------------------------------
    async def admit(self, principal: Principal, tokens: int) -> Admission | None:
        """Count a request (``tokens``: the estimate charged now); raise :class:`RateLimited` if
        it passes a limit. None: the key has no limits."""
        limits = principal.limits
        if limits.unlimited:
            return None
        estimate = max(1, tokens)
        lease = f"{self._replica}:{next(self._seq)}" if limits.concurrent_requests else None
        (counts, now), store = await self._run(
            lambda store: self._charge(store, principal, estimate, lease)
        )
        self.metrics.of_key(principal.name)[0].inc()
        return Admission(
            principal,
            store,
            estimate,
            counts.tokens_end,
            lease,
            _headers(limits, counts, now),
        )

    async def _charge(
        self, store: Counters, principal: Principal, estimate: int, lease: str | None
    ) -> tuple[_Counts, float]:
        limits = principal.limits
        rk, tk, ck = self._keys(principal)
        window = self.config.window_s
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        r_count, t_count = await self._pair(
            store,
            store.incr(rk, window, 1) if rpm else None,
            store.incr(tk, window, estimate) if tpm else None,
        )
        now = self._clock()
        r_end = await self._end(store, rk, r_count, 1, now) if r_count is not None else now
        t_end = await self._end(store, tk, t_count, estimate, now) if t_count is not None else now
        counts = _Counts(r_count, t_count, r_end, t_end)
        over_r = rpm is not None and r_count is not None and r_count > rpm
        over_t = tpm is not None and t_count is not None and t_count > tpm
        if over_r or over_t:
            await self._refund(store, principal, estimate, r_count, t_count)
            kind, end = ("requests", r_end) if over_r else ("tokens", t_end)
            self._refuse(principal, kind, counts, now, end, estimate)
        if lease is not None and limits.concurrent_requests is not None:
            taken, _ = await store.acquire(ck, lease, limits.concurrent_requests, self.lease_ttl_s)
            if not taken:
                await self._refund(store, principal, estimate, r_count, t_count)
                self.metrics.rate_limited.labels(principal.name, "concurrency").inc()
                raise RateLimited(
                    f"Too many concurrent requests for key '{principal.name}': limit "
                    f"{limits.concurrent_requests}. Retry when one of them has finished.",
                    kind="requests",
                    retry_after_s=1,
                    headers=_headers(limits, counts, now),
                )
        return counts, now

    async def _refund(
        self,
        store: Counters,
        principal: Principal,
        estimate: int,
        r_count: int | None,
        t_count: int | None,
    ) -> None:
        rk, tk, _ = self._keys(principal)
        await self._pair(
            store,
            store.take_back(rk, 1) if r_count is not None else None,
            store.take_back(tk, estimate) if t_count is not None else None,
        )

    def _refuse(
        self,
        principal: Principal,
        kind: str,
        counts: _Counts,
        now: float,
        end: float,
        estimate: int,
    ) -> None:
        limits = principal.limits
        self.metrics.rate_limited.labels(principal.name, kind).inc()
        limit = limits.requests_per_minute if kind == "requests" else limits.tokens_per_minute
        shown = _Counts(
            counts.requests if kind != "requests" else (counts.requests or 0) - 1,
            counts.tokens if kind != "tokens" else (counts.tokens or 0) - estimate,
            counts.requests_end,
            counts.tokens_end,
        )
        if kind == "tokens" and limit is not None and estimate > limit:
            message = (
                f"Request too large for key '{principal.name}': about {estimate} tokens (prompt "
                f"and max_tokens), limit {limit} tokens per {self.config.window_s} s."
            )
        else:
            message = (
                f"Rate limit reached for key '{principal.name}' on {kind} per "
                f"{self.config.window_s} s: limit {limit}. Retry after {duration(end - now)}."
            )
        raise RateLimited(
            message,
            kind=kind,
            retry_after_s=max(1, math.ceil(end - now)),
            headers=_headers(limits, shown, now),
        )

    # -- settling ------------------------------------------------------------------------------
    async def finish(self, admission: Admission | None, used_tokens: int | None) -> None:
        """Release the lease; correct tokens to ``used_tokens`` (None: the estimate stands)."""
        if admission is None or admission.settled:
            return
        admission.settled = True
        principal = admission.principal
        charged = admission.estimate if used_tokens is None else used_tokens
        self.metrics.of_key(principal.name)[1].inc(max(0, charged))
        store = admission.counters
        if store is self._redis and self._clock() < self._skip_until:
            return  # Redis is being skipped: the lease expires on its own, the estimate stands
        try:
            await self._bounded(store, lambda s: self._settle(s, admission, used_tokens))
        except self._store_errors as exc:
            self._failed(exc)

    def finish_now(self, admission: Admission, used_tokens: int | None) -> bool:
        """:meth:`finish` without awaiting when the admission was counted in memory (no I/O);
        False when it was counted in Redis and must go through :meth:`finish`."""
        store = admission.counters
        if store is not self._local:
            return False
        if admission.settled:
            return True
        admission.settled = True
        principal = admission.principal
        charged = admission.estimate if used_tokens is None else used_tokens
        self.metrics.of_key(principal.name)[1].inc(max(0, charged))
        _, tk, ck = self._keys(principal)
        if admission.lease is not None:
            self._local.release_now(ck, admission.lease)
        delta = self._delta(admission, used_tokens)
        if delta > 0:
            self._local.incr_now(tk, self.config.window_s, delta)
        elif delta < 0:
            self._local.take_back_now(tk, -delta)
        return True

    def _delta(self, admission: Admission, used: int | None) -> int:
        """The token correction to record: more used than estimated always; less only while the
        window the estimate went into lasts."""
        if used is None or admission.principal.limits.tokens_per_minute is None:
            return 0
        delta = used - admission.estimate
        if delta > 0 or (delta < 0 and self._clock() < admission.tokens_end):
            return delta
        return 0

    async def _settle(self, store: Counters, admission: Admission, used: int | None) -> None:
        _, tk, ck = self._keys(admission.principal)
        if admission.lease is not None:
            await store.release(ck, admission.lease)
        delta = self._delta(admission, used)
        if delta > 0:
            await store.incr(tk, self.config.window_s, delta)
        elif delta < 0:
            await store.take_back(tk, -delta)

    # -- looking without counting --------------------------------------------------------------
    async def peek(self, principal: Principal) -> dict[str, str]:
        """The x-ratelimit-* headers for a response that charged nothing (e.g. a 400)."""
        limits = principal.limits
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return {}
        rk, tk, _ = self._keys(principal)
        try:
            (r, t), store = await self._run(
                lambda s: self._pair(
                    s,
                    s.get(rk) if limits.requests_per_minute else None,
                    s.get(tk) if limits.tokens_per_minute else None,
                )
            )
            now = self._clock()
            r_end = self._ends.get((id(store), rk), now)
            t_end = self._ends.get((id(store), tk), now)
        except QuotaUnavailable:
            return {}
        return _headers(limits, _Counts(r, t, max(r_end, now), max(t_end, now)), now)

    async def held(self, principal: Principal) -> int:
        """Concurrent requests the key holds now (tests, /admin)."""
        _, _, ck = self._keys(principal)
        count, _ = await self._run(lambda s: s.held(ck))
        return count
