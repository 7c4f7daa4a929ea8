"""Conversation state in Redis, shared by several gateway replicas (``pip install quantroute[redis]``).

One key per stored response (``<prefix><id>``, its :class:`StoredResponse` as JSON) with a TTL;
reading a conversation refreshes every turn's TTL in one pipelined round trip (``GETEX``), so a
conversation of any length costs two round trips: the previous response, then its ancestors.
Bound the memory with Redis's own ``maxmemory`` and an eviction policy (``volatile-lru``): an
evicted turn makes its conversation answer "not found" rather than continue with a hole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

from quantroute.apis.conversations import StoredResponse
from quantroute.errors import ConversationStoreUnavailable

DEFAULT_PREFIX = "quantroute:response:"
P = ParamSpec("P")
T = TypeVar("T")


def _unavailable(
    call: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis errors and timeouts become one error the client gets as a 503 (no hanging)."""

    @functools.wraps(call)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        from redis.exceptions import RedisError

        try:
            return await call(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            raise ConversationStoreUnavailable(
                f"The conversation store (Redis) cannot answer: {type(exc).__name__}"
            ) from exc

    return wrapped


class RedisConversations:
    def __init__(
        self, url: str, *, ttl_s: float, prefix: str = DEFAULT_PREFIX, timeout_s: float = 1.0
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "conversations.redis_url needs the Redis client: pip install 'quantroute[redis]'"
            ) from exc
        self._redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._prefix = prefix

    def _key(self, response_id: str) -> str:
        return self._prefix + response_id

    @_unavailable
    async def put(self, record: StoredResponse) -> None:
        await self._redis.set(self._key(record.id), record.to_json(), px=self._ttl_ms)

    @_unavailable
    async def get(self, response_id: str) -> StoredResponse | None:
        raw = await self._redis.getex(self._key(response_id), px=self._ttl_ms)
        return None if raw is None else StoredResponse.from_json(raw)

    @_unavailable
    async def get_many(self, response_ids: Sequence[str]) -> list[StoredResponse | None]:
        if not response_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for rid in response_ids:
                pipe.getex(self._key(rid), px=self._ttl_ms)
            raws = await pipe.execute()
        return [None if raw is None else StoredResponse.from_json(raw) for raw in raws]

    @_unavailable
    async def delete(self, response_id: str) -> bool:
        return bool(await self._redis.delete(self._key(response_id)))

    async def aclose(self) -> None:
        await self._redis.aclose()
