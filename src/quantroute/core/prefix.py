"""Where a prompt's prefix is probably cached: the gateway's approximate index. Pure.

vLLM reuses the KV blocks of a prompt prefix it computed before, but only on the backend that
computed it, and a gateway without KV-cache events cannot see those caches. So the gateway
remembers what it sent where:

- A prompt is rendered as text (each message's role and content, with separators, so a role
  change is a different prefix) and cut into blocks of ``block_chars`` characters. Each full
  block gets a 64-bit hash chained over the block's text and the hash of the block before it,
  so equal hashes mean equal prefixes (the scheme vLLM uses over token ids). The hash is
  BLAKE2b, the same in every process, so replicas could share an index.
- Per backend, an LRU map from block hash to the time it was last sent there. Recording a
  prompt touches its blocks tail first, so under the size bound a prompt's tail is forgotten
  before the prefix it shares with others (vLLM evicts the same way). The bound per backend
  is ``max_blocks_per_backend``, and never more than the backend's KV cache could hold
  (``capacity_blocks``, from its ``vllm:cache_config_info``).
- An entry older than ``ttl_s`` counts as gone: the horizon is meant to be shorter than the
  time a backend keeps an idle prefix before reusing its blocks.
- A request's *expected hit share* on a backend is the share of its prompt characters covered
  by the leading blocks found there.

Time is an argument everywhere; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BlockKey = int
_ROOT = b"quantroute prefix index"
_MESSAGE_END = "\x1e"
_ROLE_END = "\x1f"


@dataclass(frozen=True, slots=True)
class PrefixSettings:
    block_chars: int = 256
    """Characters per block: ~64 tokens at 4 characters per token (vLLM's GPU block is 16)."""
    max_blocks_per_backend: int = 65_536
    """Memory bound: entries kept per backend (~16M prompt characters, ~4M tokens)."""
    ttl_s: float = 300.0
    """An entry not refreshed for this long counts as evicted on the backend."""

    def __post_init__(self) -> None:
        if self.block_chars < 1 or self.max_blocks_per_backend < 1 or self.ttl_s <= 0:
            raise ValueError(f"invalid prefix index settings: {self}")


def chat_prefix_text(messages: Sequence[tuple[str, str]]) -> str:
    """The text a chat prompt's prefix is hashed over: role, separator, content, per message."""
    return "".join(f"{role}{_ROLE_END}{text}{_MESSAGE_END}" for role, text in messages)


def text_blocks(text: str, block_chars: int) -> tuple[BlockKey, ...]:
    """The chained hash of every full block of ``text`` (a partial last block has none)."""
    keys: list[BlockKey] = []
    parent = _ROOT
    data = text.encode("utf-8", "surrogatepass")
    # Blocks are cut on characters, not bytes: encode block by block only when needed.
    if len(data) == len(text):
        chunks: Iterable[bytes] = (
            data[i : i + block_chars] for i in range(0, len(data) - block_chars + 1, block_chars)
        )
    else:
        chunks = (
            text[i : i + block_chars].encode("utf-8", "surrogatepass")
            for i in range(0, len(text) - block_chars + 1, block_chars)
        )
    for chunk in chunks:
        parent = hashlib.blake2b(parent + chunk, digest_size=8).digest()
        keys.append(int.from_bytes(parent, "big"))
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    """A prompt as the index sees it: its block keys and its length in characters."""

    keys: tuple[BlockKey, ...]
    chars: int

    @classmethod
    def of(cls, text: str, settings: PrefixSettings) -> PromptBlocks:
        return cls(text_blocks(text, settings.block_chars), len(text))

    def share(self, matched_blocks: int, block_chars: int) -> float:
        """Share of the prompt's characters covered by ``matched_blocks`` leading blocks."""
        if self.chars == 0:
            return 0.0
        return min(1.0, matched_blocks * block_chars / self.chars)


class PrefixIndex:
    """Per backend, an LRU of the block keys the gateway sent there, with their last time."""

    def __init__(self, settings: PrefixSettings | None = None) -> None:
        self.settings = settings or PrefixSettings()
        self._backends: dict[str, OrderedDict[BlockKey, float]] = {}

    def record(
        self,
        backend_id: str,
        keys: Sequence[BlockKey],
        now: float,
        capacity_blocks: int | None = None,
    ) -> None:
        """``keys`` were sent to ``backend_id`` at ``now``; keep at most the bound's newest."""
        lru = self._backends.setdefault(backend_id, OrderedDict())
        for key in reversed(keys):  # tail first: the shared prefix ends up most recent
            lru[key] = now
            lru.move_to_end(key)
        bound = self.settings.max_blocks_per_backend
        if capacity_blocks is not None:
            bound = max(1, min(bound, capacity_blocks))
        while len(lru) > bound:
            lru.popitem(last=False)
        self._expire(lru, now)

    def match(
        self, keys: Sequence[BlockKey], now: float, backends: Iterable[str] | None = None
    ) -> dict[str, int]:
        """Per backend, how many leading ``keys`` it probably still holds (0 when none)."""
        horizon = now - self.settings.ttl_s
        wanted = self._backends.keys() if backends is None else backends
        result: dict[str, int] = {}
        for backend_id in wanted:
            lru = self._backends.get(backend_id)
            matched = 0
            if lru is not None:
                for key in keys:
                    seen = lru.get(key)
                    if seen is None or seen < horizon:
                        break
                    matched += 1
            result[backend_id] = matched
        return result

    def forget(self, backend_id: str) -> None:
        """Drop what is known about a backend (it left the fleet or restarted)."""
        self._backends.pop(backend_id, None)

    def retain(self, backend_ids: Iterable[str]) -> None:
        """Keep only these backends' entries."""
        keep = set(backend_ids)
        for backend_id in [b for b in self._backends if b not in keep]:
            del self._backends[backend_id]

    def expire(self, now: float) -> None:
        """Drop every entry past the horizon (matching ignores them anyway)."""
        for lru in self._backends.values():
            self._expire(lru, now)

    def entries(self, backend_id: str | None = None) -> int:
        """Entries held for one backend, or for all."""
        if backend_id is not None:
            return len(self._backends.get(backend_id, ()))
        return sum(len(lru) for lru in self._backends.values())

    def _expire(self, lru: OrderedDict[BlockKey, float], now: float) -> None:
        horizon = now - self.settings.ttl_s
        while lru:
            key, seen = next(iter(lru.items()))
            if seen >= horizon:
                return
            del lru[key]


class SessionTable:
    """Session id -> the backend that last served it, LRU-bounded, expiring after ``ttl_s``."""

    def __init__(self, max_sessions: int = 100_000, ttl_s: float = 600.0) -> None:
        if max_sessions < 1 or ttl_s <= 0:
            raise ValueError("max_sessions and ttl_s must be positive")
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def remember(self, session_id: str, backend_id: str, now: float) -> None:
        self._sessions[session_id] = (backend_id, now)
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def lookup(self, session_id: str, now: float) -> str | None:
        entry = self._sessions.get(session_id)
        if entry is None or entry[1] < now - self.ttl_s:
            return None
        return entry[0]

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass(frozen=True, slots=True)
class PrefixView:
    """What the index expects for one request, looked up just before the decision."""

    shares: Mapping[str, float]
    """Backend id -> expected share of this prompt already cached there (0-1)."""
    entries: Mapping[str, int]
    """Backend id -> entries the index holds for it (the Rust routers' "tree size")."""
    session_backend: str | None = None
    """The backend that served this request's session last, while the session is remembered."""

    def share(self, backend_id: str) -> float:
        return self.shares.get(backend_id, 0.0)


@dataclass(frozen=True, slots=True)
class BalanceGuard:
    """When a prefix's backend is too far ahead in load, its cache bonus is withdrawn.

    The test the Rust routers use (sglang's and vllm-router's cache-aware policy): a backend is
    overloaded when its load exceeds the least loaded candidate's by more than ``abs_threshold``
    requests *and* is more than ``rel_threshold`` times it."""

    abs_threshold: float = 8.0
    rel_threshold: float = 1.5

    def overloaded(self, load: float, min_load: float) -> bool:
        return load - min_load > self.abs_threshold and load > min_load * self.rel_threshold


def prefix_score(share: float, load: float, loads: Sequence[float], guard: BalanceGuard) -> float:
    """The prefix scorer: the expected hit share in [0, 1], or 0 for an overloaded backend."""
    if share <= 0.0 or (loads and guard.overloaded(load, min(loads))):
        return 0.0
    return min(1.0, share)


def uncached_tokens(prompt_tokens: int, share: float) -> int:
    """Prompt tokens a backend still has to prefill when ``share`` of the prompt is cached."""
    return max(1, round(prompt_tokens * (1.0 - min(1.0, max(0.0, share)))))


def shares(prompt: PromptBlocks, matched: Mapping[str, int], block_chars: int) -> dict[str, float]:
    """Expected hit share per backend from ``PrefixIndex.match``."""
    return {b: prompt.share(n, block_chars) for b, n in matched.items()}


__all__ = [
    "BalanceGuard",
    "BlockKey",
    "PrefixIndex",
    "PrefixSettings",
    "PrefixView",
    "PromptBlocks",
    "SessionTable",
    "chat_prefix_text",
    "prefix_score",
    "shares",
    "text_blocks",
    "uncached_tokens",
]
