"""KV blocks with automatic prefix caching, the way vLLM V1 keeps them.

Pure and synchronous. What it follows from vLLM (`vllm/v1/core/block_pool.py`,
`kv_cache_utils.py`, `kv_cache_manager.py`):

- A *full* block of a prompt is identified by a hash chained over its tokens and the hash
  of the block before it (`block_hashes`), so equal hashes mean equal prefixes. Only full
  blocks are ever cached.
- Blocks live in one pool. A free block sits in a queue ordered by when it was freed; a
  new allocation takes the queue's head (least recently freed). A free block that still
  carries a hash keeps its contents until it is taken: taking it evicts it from the cache,
  which makes eviction LRU over the free cached blocks.
- A request looks up the longest run of its leading block hashes that are cached, at most
  `num_tokens - 1` tokens (the last prompt token is always computed, to get logits). Hit
  blocks are shared (reference counted) and leave the free queue while in use.
- A request frees its blocks in reverse order, so its tail blocks are evicted before the
  blocks of the prefix it shares with others.
- The hit statistics count tokens: queries = the request's tokens, hits = the cached
  tokens it reused, recorded when it is admitted (`vllm:prefix_cache_queries_total`,
  `vllm:prefix_cache_hits_total`); requests re-admitted after preemption are kept apart.

Not modelled: the blocks of generated tokens are not hashed (only prompt blocks are), so
a follow-up turn reuses the previous turn's prompt but prefills the previous answer again
(real vLLM caches decoded blocks too; this under-counts hits by at most the answer).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BlockHash = bytes
ROOT_HASH: BlockHash = hashlib.sha256(b"quantroute.sim prefix cache root").digest()


def block_hashes(tokens: Sequence[str], block_size: int) -> tuple[BlockHash, ...]:
    """The chained hash of every full block of `tokens` (a partial last block has none)."""
    hashes: list[BlockHash] = []
    parent = ROOT_HASH
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = "\x00".join(tokens[start : start + block_size]).encode()
        parent = hashlib.sha256(parent + block).digest()
        hashes.append(parent)
    return tuple(hashes)


@dataclass
class PrefixCacheCounters:
    """Token counts of prefix-cache lookups, as vLLM's `PrefixCacheStats` records them."""

    queries: int = 0
    hits: int = 0
    preempted_queries: int = 0
    preempted_hits: int = 0

    def record(self, num_tokens: int, num_hits: int, *, preempted: bool) -> None:
        if preempted:
            self.preempted_queries += num_tokens
            self.preempted_hits += num_hits
        else:
            self.queries += num_tokens
            self.hits += num_hits


class BlockPool:
    """Every KV block of one engine: free queue, reference counts, hash -> block map."""

    def __init__(self, num_blocks: int, *, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, BlockHash] = {}
        self._cached: dict[BlockHash, int] = {}
        self.evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks not held by any request (cached ones included: they can be taken)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks whose contents a later request could reuse (in use or free)."""
        return len(self._cached)

    def longest_hit(self, hashes: Sequence[BlockHash], max_blocks: int) -> list[int]:
        """The cached blocks of the longest leading run of `hashes`, at most `max_blocks`."""
        if not self.enable_caching:
            return []
        found: list[int] = []
        for block_hash in hashes[:max_blocks]:
            block = self._cached.get(block_hash)
            if block is None:
                break
            found.append(block)
        return found

    def free_after_touch(self, blocks: Iterable[int]) -> int:
        """How many blocks stay free once `blocks` are taken into use."""
        return self.num_free - sum(1 for b in blocks if self._refs[b] == 0)

    def touch(self, blocks: Iterable[int]) -> None:
        """Share cached `blocks` with one more request (out of the free queue if idle)."""
        for block in blocks:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1

    def allocate(self, count: int) -> list[int]:
        """Take `count` blocks from the head of the free queue, evicting cached contents."""
        if count > len(self._free):
            raise ValueError(f"asked for {count} blocks, {len(self._free)} free")
        taken: list[int] = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            self._evict(block)
            self._refs[block] = 1
            taken.append(block)
        return taken

    def cache(self, block: int, block_hash: BlockHash) -> None:
        """Record that `block` now holds the full block `block_hash` (first holder wins)."""
        if self.enable_caching and block_hash not in self._cached and block not in self._hash_of:
            self._cached[block_hash] = block
            self._hash_of[block] = block_hash

    def free(self, blocks: Sequence[int]) -> None:
        """Release one request's blocks, tail first, so tails are evicted before prefixes."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None

    def _evict(self, block: int) -> None:
        block_hash = self._hash_of.pop(block, None)
        if block_hash is not None:
            del self._cached[block_hash]
            self.evictions += 1


__all__ = ["ROOT_HASH", "BlockHash", "BlockPool", "PrefixCacheCounters", "block_hashes"]
