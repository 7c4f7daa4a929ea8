"""The prefix index, the session table, the prefix scorer and the cache-aware picker: tables."""

from __future__ import annotations

import hashlib
import sys

import pytest

from quantroute.core.cache_aware import (
    CacheAwareCandidate,
    CacheAwareSettings,
    cache_aware_choice,
    imbalanced,
)
from quantroute.core.prefix import (
    BalanceGuard,
    PrefixIndex,
    PrefixSettings,
    PromptBlocks,
    SessionTable,
    chat_prefix_text,
    prefix_score,
    shares,
    text_blocks,
    uncached_tokens,
)

SETTINGS = PrefixSettings(block_chars=8, max_blocks_per_backend=100, ttl_s=60.0)
DOC = "abcdefgh" * 4  # 32 characters: 4 blocks of 8


# -- hashing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "block_chars", "blocks"),
    [
        ("", 8, 0),
        ("abcdefg", 8, 0),  # a partial block is never hashed
        ("abcdefgh", 8, 1),
        ("abcdefghi", 8, 1),
        (DOC, 8, 4),
        (DOC, 5, 6),
        ("é" * 16, 8, 2),  # blocks are characters, not bytes
    ],
)
def test_full_blocks_only(text: str, block_chars: int, blocks: int) -> None:
    assert len(text_blocks(text, block_chars)) == blocks


def test_hashes_chain_over_the_prefix_and_are_stable() -> None:
    a = text_blocks("AAAAAAAA" + "BBBBBBBB", 8)
    b = text_blocks("CCCCCCCC" + "BBBBBBBB", 8)
    assert a[1] != b[1]  # the same block text after another prefix is another block
    assert text_blocks("AAAAAAAA", 8) == a[:1]
    # deterministic across processes (BLAKE2b, not Python's salted hash): a fixed value
    digest = hashlib.blake2b(b"quantroute prefix indexAAAAAAAA", digest_size=8).digest()
    assert text_blocks("AAAAAAAA", 8)[0] == int.from_bytes(digest, "big")


def test_chat_rendering_separates_roles_and_messages() -> None:
    same_text = [("system", "x"), ("user", "y")]
    assert chat_prefix_text(same_text) != chat_prefix_text([("user", "x"), ("user", "y")])
    assert chat_prefix_text([("user", "ab")]) != chat_prefix_text([("user", "a"), ("user", "b")])
    turn1 = [("system", "s" * 40), ("user", "question one")]
    turn2 = [*turn1, ("assistant", "answer"), ("user", "question two")]
    assert chat_prefix_text(turn2).startswith(chat_prefix_text(turn1))


def test_prompt_blocks_share() -> None:
    prompt = PromptBlocks.of(DOC + "tail", SETTINGS)  # 36 chars, 4 full blocks
    assert len(prompt.keys) == 4
    assert prompt.share(0, 8) == 0.0
    assert prompt.share(4, 8) == pytest.approx(32 / 36)
    assert prompt.share(9, 8) == 1.0
    assert PromptBlocks((), 0).share(3, 8) == 0.0


# -- the index ------------------------------------------------------------------------


def test_longest_match_per_backend() -> None:
    index = PrefixIndex(SETTINGS)
    keys = text_blocks(DOC, 8)
    index.record("a", keys, now=0.0)
    index.record("b", keys[:2], now=0.0)
    other = text_blocks("zzzzzzzz" + DOC[8:], 8)
    assert index.match(keys, now=1.0) == {"a": 4, "b": 2}
    assert index.match(other, now=1.0) == {"a": 0, "b": 0}
    assert index.match(keys, now=1.0, backends=["b", "c"]) == {"b": 2, "c": 0}
    longer = text_blocks(DOC + "12345678", 8)
    assert index.match(longer, now=1.0)["a"] == 4  # a longer prompt with the same start


@pytest.mark.parametrize(
    ("recorded_at", "now", "matched"),
    [(0.0, 59.0, 4), (0.0, 60.0, 4), (0.0, 60.5, 0), (50.0, 100.0, 4)],
)
def test_entries_expire_after_the_horizon(recorded_at: float, now: float, matched: int) -> None:
    index = PrefixIndex(SETTINGS)
    keys = text_blocks(DOC, 8)
    index.record("a", keys, now=recorded_at)
    assert index.match(keys, now=now)["a"] == matched
    index.expire(now)
    assert index.entries("a") == matched


def test_refreshing_a_prefix_keeps_it_alive() -> None:
    index = PrefixIndex(SETTINGS)
    keys = text_blocks(DOC, 8)
    index.record("a", keys, now=0.0)
    index.record("a", keys[:2], now=50.0)  # a later request shared the first two blocks
    assert index.match(keys, now=100.0)["a"] == 2


def test_lru_bound_forgets_tails_before_shared_prefixes() -> None:
    index = PrefixIndex(PrefixSettings(block_chars=8, max_blocks_per_backend=6, ttl_s=60.0))
    first = text_blocks(DOC, 8)  # 4 blocks
    second = text_blocks(DOC[:16] + "wxyzwxyz" * 2, 8)  # shares 2 blocks, adds 2
    index.record("a", first, now=0.0)
    index.record("a", second, now=1.0)
    assert index.entries("a") == 6
    third = text_blocks("q" * 24, 8)  # 3 new blocks: 3 must go, oldest first
    index.record("a", third, now=2.0)
    assert index.entries("a") == 6
    # oldest first: first's tail (blocks 4, 3), then second's tail (block 4); the two blocks
    # both share were touched again by second, so both prompts keep their common start
    assert index.match(first, now=3.0)["a"] == 2
    assert index.match(second, now=3.0)["a"] == 3
    assert index.match(third, now=3.0)["a"] == 3


def test_capacity_of_the_backend_bounds_its_entries() -> None:
    index = PrefixIndex(SETTINGS)
    index.record("small", text_blocks("x" * 800, 8), now=0.0, capacity_blocks=10)
    index.record("big", text_blocks("x" * 800, 8), now=0.0, capacity_blocks=10_000)
    assert (index.entries("small"), index.entries("big"), index.entries()) == (10, 100, 110)


def test_forget_and_retain() -> None:
    index = PrefixIndex(SETTINGS)
    for backend in ("a", "b", "c"):
        index.record(backend, text_blocks(DOC, 8), now=0.0)
    index.forget("a")
    index.retain(["b"])
    assert (index.entries("a"), index.entries("b"), index.entries("c")) == (0, 4, 0)


def test_memory_stays_within_the_bound() -> None:
    """~80 bytes per entry measured here: 65,536 entries per backend is ~5 MB."""
    settings = PrefixSettings(block_chars=8, max_blocks_per_backend=5_000, ttl_s=1e9)
    index = PrefixIndex(settings)
    for i in range(40):
        index.record("a", text_blocks(f"{i:08d}" * 500, 8), now=float(i))
    assert index.entries("a") == 5_000
    lru = index._backends["a"]
    per_entry = (sys.getsizeof(lru) + sum(sys.getsizeof(k) for k in lru)) / len(lru)
    assert per_entry < 200


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="invalid prefix index settings"):
        PrefixSettings(block_chars=0)


# -- sessions -------------------------------------------------------------------------


def test_session_table_lookup_expiry_and_bound() -> None:
    table = SessionTable(max_sessions=2, ttl_s=10.0)
    table.remember("s1", "a", now=0.0)
    table.remember("s2", "b", now=1.0)
    assert table.lookup("s1", now=5.0) == "a"
    assert table.lookup("s1", now=10.5) is None
    table.remember("s1", "c", now=11.0)  # moves and refreshes
    table.remember("s3", "a", now=12.0)  # s2 is the least recent: dropped
    assert (table.lookup("s2", 12.0), table.lookup("s1", 12.0), len(table)) == (None, "c", 2)
    assert table.lookup("unknown", 0.0) is None


# -- the scorer -----------------------------------------------------------------------

GUARD = BalanceGuard(abs_threshold=8, rel_threshold=1.5)


@pytest.mark.parametrize(
    ("share", "load", "loads", "score"),
    [
        (0.9, 3, [3, 2, 5], 0.9),
        (0.0, 0, [0, 4], 0.0),
        (1.2, 0, [0], 1.0),
        (0.9, 10, [10, 2], 0.9),  # 8 more than the least loaded is not "more than 8"...
        (0.9, 11, [11, 2], 0.0),  # ...9 more is, and 11 > 1.5 x 2: no bonus
        (0.9, 30, [30, 25], 0.9),  # far ahead in absolute terms, not relatively
        (0.9, 9, [9, 0], 0.0),
        (0.9, 5, [5, 0], 0.9),  # within the absolute threshold
        (0.9, 0, [], 0.9),
    ],
)
def test_prefix_score(share: float, load: float, loads: list[float], score: float) -> None:
    assert prefix_score(share, load, loads, GUARD) == pytest.approx(score)


@pytest.mark.parametrize(
    ("prompt", "share", "uncached"),
    [(1000, 0.0, 1000), (1000, 0.9, 100), (1000, 1.0, 1), (1000, 1.5, 1), (10, -1.0, 10)],
)
def test_uncached_tokens(prompt: int, share: float, uncached: int) -> None:
    assert uncached_tokens(prompt, share) == uncached


def test_shares_per_backend() -> None:
    prompt = PromptBlocks.of(DOC, SETTINGS)
    assert shares(prompt, {"a": 4, "b": 1, "c": 0}, 8) == {"a": 1.0, "b": 0.25, "c": 0.0}


# -- the comparison picker ------------------------------------------------------------

CA = CacheAwareSettings(cache_threshold=0.3, balance_abs_threshold=4, balance_rel_threshold=1.5)


def cand(backend: str, load: float, rate: float, size: int) -> CacheAwareCandidate:
    return CacheAwareCandidate(backend, load, rate, size)


@pytest.mark.parametrize(
    ("candidates", "chosen", "rule"),
    [
        ([cand("a", 2, 0.9, 50), cand("b", 1, 0.0, 10)], "a", "cache"),
        ([cand("a", 2, 0.3, 50), cand("b", 1, 0.2, 10)], "b", "smallest_tree"),  # 0.3 not > 0.3
        ([cand("a", 9, 0.9, 50), cand("b", 2, 0.0, 10)], "b", "balance"),
        ([cand("a", 6, 0.9, 50), cand("b", 2, 0.0, 10)], "a", "cache"),  # diff 4: not over 4
        ([cand("a", 30, 0.9, 50), cand("b", 25, 0.0, 10)], "a", "cache"),  # not 1.5x
        ([cand("a", 0, 0.0, 5), cand("b", 0, 0.0, 5)], "a", "smallest_tree"),  # order breaks ties
    ],
)
def test_cache_aware_choice(candidates: list[CacheAwareCandidate], chosen: str, rule: str) -> None:
    assert cache_aware_choice(candidates, CA) == (chosen, rule)


def test_cache_aware_needs_candidates_and_reads_both_thresholds() -> None:
    with pytest.raises(ValueError, match="no candidates"):
        cache_aware_choice([], CA)
    assert imbalanced([0, 5], CA)
    assert not imbalanced([0, 4], CA)
    assert not imbalanced([10, 15], CA)
