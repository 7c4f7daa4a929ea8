"""The block pool's prefix cache on its own: chained hashes, longest hit, LRU eviction."""

from __future__ import annotations

import pytest

from quantroute.sim.kv_blocks import BlockPool, PrefixCacheCounters, block_hashes
from quantroute.sim.text import chat_prompt_pieces, chat_prompt_tokens

TOKENS = [f"t{i}" for i in range(40)]


@pytest.mark.parametrize(
    ("tokens", "block_size", "blocks"),
    [
        (TOKENS, 16, 2),  # 40 tokens: two full blocks, the partial third has no hash
        (TOKENS[:32], 16, 2),
        (TOKENS[:15], 16, 0),
        ([], 16, 0),
        (TOKENS, 4, 10),
    ],
)
def test_only_full_blocks_are_hashed(tokens: list[str], block_size: int, blocks: int) -> None:
    assert len(block_hashes(tokens, block_size)) == blocks


def test_hashes_are_chained_over_the_prefix() -> None:
    base = block_hashes(TOKENS, 4)
    changed_first = block_hashes(["x", *TOKENS[1:]], 4)
    changed_fifth_block = [*TOKENS[:17], "x", *TOKENS[18:]]
    later = block_hashes(changed_fifth_block, 4)
    assert all(a != b for a, b in zip(base, changed_first, strict=True))  # every block differs
    assert later[:4] == base[:4]
    assert all(a != b for a, b in zip(later[4:], base[4:], strict=True))
    # the same block content after a different prefix is a different block
    shifted = block_hashes(["y", "y", "y", "y", *TOKENS[:4]], 4)
    assert shifted[1] != base[0]


def test_token_boundaries_matter() -> None:
    assert block_hashes(["ab", "c"], 2) != block_hashes(["a", "bc"], 2)


def test_chat_pieces_count_as_the_estimate_and_share_leading_messages() -> None:
    system = ("system", "You are a careful assistant. " * 20)
    first = [system, ("user", "What is the capital of France?")]
    second = [system, ("user", "Name three rivers in Spain, please.")]
    assert len(chat_prompt_pieces(first)) == chat_prompt_tokens([m[1] for m in first])
    a, b = block_hashes(chat_prompt_pieces(first), 16), block_hashes(chat_prompt_pieces(second), 16)
    shared = sum(1 for x, y in zip(a, b, strict=False) if x == y)
    assert shared == (1 + 4 + len(system[1]) // 4) // 16  # BOS + header + system text
    role_swapped = [("user", system[1]), first[1]]
    assert block_hashes(chat_prompt_pieces(role_swapped), 16)[0] != a[0]


def pool_with(blocks: int, hashes: int) -> tuple[BlockPool, list[int], tuple[bytes, ...]]:
    """A pool in which one request cached `hashes` blocks and then finished."""
    pool = BlockPool(blocks)
    keys = block_hashes([f"t{i}" for i in range(hashes * 4)], 4)
    held = pool.allocate(hashes)
    for block, key in zip(held, keys, strict=True):
        pool.cache(block, key)
    pool.free(held)
    return pool, held, keys


def test_longest_hit_stops_at_the_first_missing_block_and_at_the_cap() -> None:
    pool, held, keys = pool_with(16, 4)
    assert pool.longest_hit(keys, 10) == held
    assert pool.longest_hit(keys, 2) == held[:2]
    other = block_hashes([f"u{i}" for i in range(8)], 4)
    assert pool.longest_hit((keys[0], other[1], keys[2]), 10) == held[:1]
    assert pool.longest_hit(other, 10) == []


def test_freed_cached_blocks_count_as_free_and_are_reused_when_touched() -> None:
    pool, held, _keys = pool_with(8, 4)
    assert pool.num_free == 8
    assert pool.num_cached == 4
    assert pool.free_after_touch(held[:3]) == 5
    pool.touch(held[:3])
    assert pool.num_free == 5
    pool.touch(held[:3])  # a second sharer takes nothing more
    assert pool.num_free == 5
    pool.free(held[:3])
    assert pool.num_free == 5
    pool.free(held[:3])
    assert pool.num_free == 8


def test_eviction_takes_least_recently_freed_blocks_first_and_tails_before_prefixes() -> None:
    pool, held, keys = pool_with(6, 4)  # blocks 0-3 cached; 4, 5 never used
    # free queue: 4, 5 (never used), then the request's blocks tail first: 3, 2, 1, 0
    assert pool.allocate(2) == [4, 5]
    assert pool.evictions == 0
    assert pool.allocate(1) == [held[3]]  # the tail goes first
    assert pool.evictions == 1
    assert pool.longest_hit(keys, 10) == held[:3]
    pool.touch(held[:1])  # a hit on the first block keeps it out of the queue
    assert pool.allocate(2) == [held[2], held[1]]
    assert pool.longest_hit(keys, 10) == held[:1]
    assert pool.num_free == 0
    with pytest.raises(ValueError, match="asked for 1 blocks, 0 free"):
        pool.allocate(1)


def test_a_recently_reused_prefix_outlives_an_older_one() -> None:
    pool = BlockPool(4)
    old = block_hashes([f"o{i}" for i in range(8)], 4)
    new = block_hashes([f"n{i}" for i in range(8)], 4)
    for keys in (old, new):
        blocks = pool.allocate(2)
        for block, key in zip(blocks, keys, strict=True):
            pool.cache(block, key)
        pool.free(blocks)
    hit = pool.longest_hit(old, 2)  # old is used again: it becomes the most recent
    pool.touch(hit)
    pool.free(hit)
    pool.allocate(2)
    assert pool.longest_hit(old, 2) == hit
    assert pool.longest_hit(new, 2) == []


def test_first_holder_of_a_hash_wins_and_caching_can_be_off() -> None:
    pool = BlockPool(4)
    key = block_hashes(TOKENS[:4], 4)[0]
    a, b = pool.allocate(2)
    pool.cache(a, key)
    pool.cache(b, key)
    assert pool.longest_hit((key,), 1) == [a]
    off = BlockPool(4, enable_caching=False)
    block = off.allocate(1)[0]
    off.cache(block, key)
    assert off.longest_hit((key,), 1) == []
    assert off.num_cached == 0


def test_counters_keep_preempted_requests_apart() -> None:
    counters = PrefixCacheCounters()
    counters.record(100, 64, preempted=False)
    counters.record(50, 48, preempted=True)
    assert (counters.queries, counters.hits) == (100, 64)
    assert (counters.preempted_queries, counters.preempted_hits) == (50, 48)
