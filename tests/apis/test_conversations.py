"""The conversation stores: one contract for memory and Redis, then each one's bounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from quantroute.apis.conversations import (
    ConversationGone,
    ConversationStore,
    MemoryConversations,
    StoredResponse,
    continuation,
)
from quantroute.apis.conversations_redis import DEFAULT_PREFIX, RedisConversations


def turn(rid: str, text: str, ancestors: tuple[str, ...] = ()) -> StoredResponse:
    output = [{"type": "message", "role": "assistant", "id": f"msg_{rid}", "status": "completed",
               "content": [{"type": "output_text", "text": f"answer to {text}",
                            "annotations": []}]}]  # fmt: skip
    items = ({"type": "message", "role": "user", "content": text},)
    return StoredResponse(
        rid, ancestors, items, {"id": rid, "object": "response", "output": output}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ConversationStore]:
    made: ConversationStore
    if request.param == "memory":
        made = MemoryConversations(max_entries=100, ttl_s=60, clock=Clock())
    else:
        made = RedisConversations(request.getfixturevalue("redis_url"), ttl_s=60)
    yield made
    await made.aclose()


async def test_a_stored_response_comes_back_whole(store: ConversationStore) -> None:
    record = turn("resp_1", "hello")
    await store.put(record)
    assert await store.get("resp_1") == record
    assert await store.get("resp_unknown") is None


async def test_a_conversation_is_every_turn_with_its_answer_oldest_first(
    store: ConversationStore,
) -> None:
    await store.put(turn("r1", "one"))
    await store.put(turn("r2", "two", ("r1",)))
    await store.put(turn("r3", "three", ("r1", "r2")))
    got = await continuation(store, "r3")
    assert got is not None
    assert got.ancestors == ("r1", "r2", "r3")
    texts = [
        item["content"] if item["role"] == "user" else item["content"][0]["text"]
        for item in got.items
    ]
    assert texts == ["one", "answer to one", "two", "answer to two", "three", "answer to three"]
    assert await continuation(store, "nope") is None


async def test_a_conversation_with_a_lost_turn_is_not_continued(store: ConversationStore) -> None:
    await store.put(turn("r1", "one"))
    await store.put(turn("r2", "two", ("r1",)))
    assert await store.delete("r1")
    assert not await store.delete("r1")
    with pytest.raises(ConversationGone) as gone:
        await continuation(store, "r2")
    assert gone.value.response_id == "r1"


async def test_memory_store_evicts_the_least_recently_used_beyond_its_bound() -> None:
    store = MemoryConversations(max_entries=3, ttl_s=60, clock=Clock())
    for i in range(3):
        await store.put(turn(f"r{i}", "x"))
    assert await store.get("r0") is not None  # r0 used: r1 is now the oldest
    await store.put(turn("r3", "x"))
    assert len(store) == 3
    assert await store.get("r1") is None
    assert all([await store.get(r) for r in ("r0", "r2", "r3")])


async def test_memory_store_expires_and_continuing_refreshes_every_turn() -> None:
    clock = Clock()
    store = MemoryConversations(max_entries=10, ttl_s=60, clock=clock)
    await store.put(turn("r1", "one"))
    clock.now += 50
    await store.put(turn("r2", "two", ("r1",)))
    clock.now += 9  # r1 would expire in 1 s; continuing from r2 refreshes it
    assert await continuation(store, "r2") is not None
    clock.now += 59  # 118 s after r1 was written
    assert await continuation(store, "r2") is not None
    clock.now += 61
    assert await store.get("r1") is None and await store.get("r2") is None
    assert len(store) == 0


async def test_redis_store_sets_and_refreshes_the_ttl_of_every_turn(redis_url: str) -> None:
    store = RedisConversations(redis_url, ttl_s=60)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await store.put(turn("r1", "one"))
        await store.put(turn("r2", "two", ("r1",)))
        assert 59_000 < await client.pttl(DEFAULT_PREFIX + "r1") <= 60_000
        await client.pexpire(DEFAULT_PREFIX + "r1", 500)
        assert await continuation(store, "r2") is not None
        assert await client.pttl(DEFAULT_PREFIX + "r1") > 59_000
    finally:
        await client.aclose()
        await store.aclose()


async def test_redis_store_forgets_a_response_after_its_ttl(redis_url: str) -> None:
    store = RedisConversations(redis_url, ttl_s=0.2)
    client = aioredis.Redis.from_url(redis_url)  # polls without refreshing (get would)
    try:
        await store.put(turn("r1", "one"))
        for _ in range(100):  # Redis expires the key on its own clock: wait at most 5 s
            if not await client.exists(DEFAULT_PREFIX + "r1"):
                break
            await asyncio.sleep(0.05)
        assert await store.get("r1") is None
    finally:
        await client.aclose()
        await store.aclose()


async def test_two_replicas_share_one_redis(redis_url: str) -> None:
    first, second = (RedisConversations(redis_url, ttl_s=60) for _ in range(2))
    try:
        await first.put(turn("r1", "one"))
        got = await continuation(second, "r1")
        assert got is not None and got.items[0]["content"] == "one"
    finally:
        await first.aclose()
        await second.aclose()
