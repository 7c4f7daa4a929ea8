"""Where quota counts live: this process's memory, or a Redis that replicas share.

Both sides count fixed windows: an increment with an expiry set when the window's first unit is
counted. On Redis that is the ``limits`` library's storage (an atomic Lua script; key TTLs, i.e.
Redis's clock, end the windows); in memory it is the same rule on two dicts read against the
injected clock. ``limits``' strategy class (``FixedWindowRateLimiter.hit``) is not used because
it returns only a bool, while the response headers need the count it computed, and the end-of-
response token correction must be recorded unconditionally.

Concurrent requests are leases: in memory a set per key; on Redis a sorted set per key whose
members expire (server time) after ``lease_ttl_s``, so a replica that dies holding leases frees
them after that bound. Acquire is one server-side script (prune, count, add).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Protocol

from limits.aio.storage import RedisStorage

from quantroute.base import Clock


class Counters(Protocol):
    async def incr(self, key: str, window_s: int, amount: int) -> int: ...

    async def take_back(self, key: str, amount: int) -> int:
        """Subtract ``amount`` from the key's window while that window lasts, never below 0;
        returns what was subtracted.

        Unlike a negative :meth:`incr`, it never opens a window: a refund that arrives after its
        window ended must not start the next one in debt (a count of -1 would let one request
        more through)."""
        ...

    async def get(self, key: str) -> int: ...

    async def window_end(self, key: str) -> float:
        """Unix time at which the key's window ends (now when there is no window)."""
        ...

    async def acquire(self, key: str, lease: str, limit: int, ttl_s: float) -> tuple[bool, int]:
        """Take a lease if fewer than ``limit`` are held: (taken, held after the call)."""
        ...

    async def release(self, key: str, lease: str) -> None: ...

    async def held(self, key: str) -> int: ...

    async def aclose(self) -> None: ...


class MemoryCounters:
    """Counts in this process (the default, and the fallback when Redis is down).

    The fixed-window rule of ``limits``' ``MemoryStorage`` (the window's end set when its first
    unit is counted; an ended window dropped when its key is read), kept here on two dicts so
    the injected clock ends the windows. ``MemoryStorage`` reads ``time.time()`` itself, and
    schedules its expiry sweep by starting a new timer thread whenever the last one has run:
    under load a thread start per request, whose wait blocked the event loop (27% of the
    gateway's busy samples in py-spy). No sweep here: the keys are two per key *name*, and an
    ended window is dropped when read. Synchronous ``*_now`` methods serve the event loop
    directly; the async ones the :class:`Counters` protocol."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._ends: dict[str, float] = {}
        self._leases: defaultdict[str, set[str]] = defaultdict(set)

    def get_now(self, key: str) -> int:
        if self._ends.get(key, 0.0) <= self._clock():
            self._counts.pop(key, None)
            self._ends.pop(key, None)
        return self._counts.get(key, 0)

    def incr_now(self, key: str, window_s: int, amount: int) -> int:
        count = self.get_now(key) + amount
        self._counts[key] = count
        if count == amount:
            self._ends[key] = self._clock() + window_s
        return count

    def take_back_now(self, key: str, amount: int) -> int:
        count = self.get_now(key)
        if key not in self._counts:
            return 0
        taken = min(amount, max(count, 0))
        self._counts[key] = count - taken
        return taken

    def release_now(self, key: str, lease: str) -> None:
        held = self._leases.get(key)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._leases[key]

    async def incr(self, key: str, window_s: int, amount: int) -> int:
        return self.incr_now(key, window_s, amount)

    async def take_back(self, key: str, amount: int) -> int:
        return self.take_back_now(key, amount)

    async def get(self, key: str) -> int:
        return self.get_now(key)

    async def window_end(self, key: str) -> float:
        return self._ends.get(key, self._clock())

    async def acquire(self, key: str, lease: str, limit: int, ttl_s: float) -> tuple[bool, int]:
        held = self._leases[key]
        if len(held) >= limit:
            return False, len(held)
        held.add(lease)
        return True, len(held)

    async def release(self, key: str, lease: str) -> None:
        self.release_now(key, lease)

    async def held(self, key: str) -> int:
        return len(self._leases.get(key, ()))

    async def aclose(self) -> None:
        self._counts.clear()
        self._ends.clear()


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return {1, held + 1}
"""

# DECRBY keeps the key's TTL; an absent key (its window over) is left absent.
_TAKE_BACK = """
local count = tonumber(redis.call('GET', KEYS[1]))
if count == nil then
  return 0
end
local taken = math.min(tonumber(ARGV[1]), math.max(count, 0))
if taken > 0 then
  redis.call('DECRBY', KEYS[1], taken)
end
return taken
"""

_HELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


class RedisCounters:
    """Counts in a Redis shared by every replica; every call bounded by ``timeout_s``.

    Windows end by Redis key TTLs and leases by Redis's ``TIME``: one clock for every replica.
    ``clock`` only turns a TTL into the Unix time a window ends (for the reset headers)."""

    def __init__(
        self, url: str, *, timeout_s: float, prefix: str, clock: Clock = time.time
    ) -> None:
        import redis.asyncio as aioredis

        self._prefix = prefix
        self._clock = clock
        # Blocking: past max_connections a call waits for a free connection (within the same
        # bound) rather than failing over to local counting at once.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=128,
            timeout=timeout_s,
        )
        self.client = aioredis.Redis(connection_pool=self._pool)
        self._storage = RedisStorage(
            "async+" + url if not url.startswith("unix") else "async+redis+unix" + url[4:],
            implementation="redispy",
            key_prefix=prefix,
            connection_pool=self._pool,  # type: ignore[arg-type]
        )
        self._acquire = self.client.register_script(_ACQUIRE)
        self._held = self.client.register_script(_HELD)
        self._take_back = self.client.register_script(_TAKE_BACK)

    def _key(self, key: str) -> str:
        """The key as stored (``limits`` prefixes its counters the same way)."""
        return f"{self._prefix}:{key}"

    async def incr(self, key: str, window_s: int, amount: int) -> int:
        return await self._storage.incr(key, window_s, amount)

    async def take_back(self, key: str, amount: int) -> int:
        return int(await self._take_back(keys=[self._key(key)], args=[amount]))

    async def get(self, key: str) -> int:
        return await self._storage.get(key)

    async def window_end(self, key: str) -> float:
        # what limits' get_expiry computes, with the injected clock for its time.time()
        return max(int(await self.client.ttl(self._key(key))), 0) + self._clock()

    async def acquire(self, key: str, lease: str, limit: int, ttl_s: float) -> tuple[bool, int]:
        taken, held = await self._acquire(keys=[self._key(key)], args=[lease, limit, ttl_s])
        return bool(taken), int(held)

    async def release(self, key: str, lease: str) -> None:
        await self.client.zrem(self._key(key), lease)

    async def held(self, key: str) -> int:
        return int(await self._held(keys=[self._key(key)]))

    async def warm_up(self) -> None:
        """Connect and load the scripts once, so the first requests pay one round trip each."""
        await self.client.ping()
        await self.client.script_load(_ACQUIRE)
        await self.client.script_load(_HELD)
        await self.client.script_load(_TAKE_BACK)
        await self._storage.incr("warm-up", 1, 1)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()
