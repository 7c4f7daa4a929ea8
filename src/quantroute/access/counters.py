"""Where quota counts live: this process's memory, or a Redis that replicas share.

Both sides count with the ``limits`` library's storage: an atomic increment with an expiry set
when the window's first unit is counted (a Lua script on Redis), i.e. ``limits``' fixed-window
strategy. The strategy class itself (``FixedWindowRateLimiter.hit``) is not used because it
returns only a bool, while the response headers need the count it computed, and the end-of-
response token correction must be recorded unconditionally.

Concurrent requests are leases: in memory a set per key; on Redis a sorted set per key whose
members expire (server time) after ``lease_ttl_s``, so a replica that dies holding leases frees
them after that bound. Acquire is one server-side script (prune, count, add).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Protocol

from limits.aio.storage import RedisStorage
from limits.storage import MemoryStorage


class Counters(Protocol):
    async def incr(self, key: str, window_s: int, amount: int) -> int: ...

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


class _ResidentTimer(threading.Timer):
    """Never started; reports itself alive so ``MemoryStorage`` starts no sweep thread."""

    def __init__(self) -> None:
        super().__init__(0, lambda: None)

    def is_alive(self) -> bool:
        return True


class MemoryCounters:
    """Counts in this process (the default, and the fallback when Redis is down).

    ``limits``' synchronous memory storage, called straight from the event loop (the ``*_now``
    methods; the async ones serve the :class:`Counters` protocol). Its asyncio twin creates a
    task per increment, and both schedule their expiry sweep by starting a new timer (a thread,
    here) whenever the last one has run: under load a thread start per request, whose wait for
    the thread blocked the event loop (27% of the gateway's busy samples in py-spy). The sweep
    only frees keys that are never read again, and ours are two per key *name*, so the storage
    gets a timer that never runs and always counts as alive; expired windows are still dropped
    when read, as ``limits`` does in ``get``."""

    def __init__(self) -> None:
        self._storage = MemoryStorage()
        self._storage.timer.cancel()
        self._storage.timer = _ResidentTimer()
        self._leases: defaultdict[str, set[str]] = defaultdict(set)

    def incr_now(self, key: str, window_s: int, amount: int) -> int:
        return self._storage.incr(key, window_s, amount)

    def release_now(self, key: str, lease: str) -> None:
        held = self._leases.get(key)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._leases[key]

    async def incr(self, key: str, window_s: int, amount: int) -> int:
        return self._storage.incr(key, window_s, amount)

    async def get(self, key: str) -> int:
        return self._storage.get(key)

    async def window_end(self, key: str) -> float:
        return self._storage.get_expiry(key)

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
        self._storage.reset()


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

_HELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


class RedisCounters:
    """Counts in a Redis shared by every replica; every call bounded by ``timeout_s``."""

    def __init__(self, url: str, *, timeout_s: float, prefix: str) -> None:
        import redis.asyncio as aioredis

        self._prefix = prefix
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

    def _lease_key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def incr(self, key: str, window_s: int, amount: int) -> int:
        return await self._storage.incr(key, window_s, amount)

    async def get(self, key: str) -> int:
        return await self._storage.get(key)

    async def window_end(self, key: str) -> float:
        return await self._storage.get_expiry(key)

    async def acquire(self, key: str, lease: str, limit: int, ttl_s: float) -> tuple[bool, int]:
        taken, held = await self._acquire(keys=[self._lease_key(key)], args=[lease, limit, ttl_s])
        return bool(taken), int(held)

    async def release(self, key: str, lease: str) -> None:
        await self.client.zrem(self._lease_key(key), lease)

    async def held(self, key: str) -> int:
        return int(await self._held(keys=[self._lease_key(key)]))

    async def warm_up(self) -> None:
        """Connect and load the scripts once, so the first requests pay one round trip each."""
        await self.client.ping()
        await self.client.script_load(_ACQUIRE)
        await self.client.script_load(_HELD)
        await self._storage.incr("warm-up", 1, 1)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._pool.disconnect()


def now() -> float:
    return time.time()
