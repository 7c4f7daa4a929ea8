"""A pure, synchronous model of vLLM's V1 engine core: scheduler, KV blocks, step time.

Nothing here reads a clock or awaits: the caller passes simulated time into
`add_request`, `abort` and `step`, and each `step(now)` returns what happened, stamped
with simulated times. The scheduler follows vLLM V1 (`vllm/v1/core/sched/scheduler.py`):

- every request tracks `num_computed` against `num_tokens` (prompt + output so far);
  a step computes up to `max_num_batched_tokens` tokens in total, so long prompts are
  prefilled in chunks, and a request whose computed tokens reach its length samples
  one new output token;
- running requests are served first, in admission order; when the KV cache has no
  block for one, the youngest running request is preempted (its blocks freed, its
  progress reset to recompute later) and put back at the head of the waiting queue;
- waiting requests are admitted first come, first served while the batch has room
  (`max_num_seqs`), the token budget lasts and their blocks fit, and not at all in a
  step that preempted;
- with prefix caching (vLLM's default, `kv_blocks.BlockPool`), a request admitted from
  the queue starts from the longest cached prefix of its prompt's block hashes and
  computes only the rest; the blocks it fills become reusable for later requests.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from dataclasses import dataclass, field

from quantroute.sim.engine_types import (
    EngineConfig,
    EngineRequest,
    EngineStats,
    FinishedRequest,
    PromptTooLongError,
    StepOutput,
    TokenEvent,
)
from quantroute.sim.kv_blocks import BlockHash, BlockPool, PrefixCacheCounters
from quantroute.sim.roofline import ScheduledChunk


@dataclass(eq=False)
class _Seq:
    request_id: str
    prompt_tokens: int
    target_output: int
    finish_reason: str
    arrival: float
    block_hashes: tuple[BlockHash, ...] = ()
    output: int = 0
    num_computed: int = 0
    block_ids: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0
    cached_tokens: int | None = None
    num_preemptions: int = 0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    done: bool = field(default=False)

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.output


class Engine:
    """The engine core of one simulated vLLM server."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._pool = BlockPool(config.num_gpu_blocks, enable_caching=config.enable_prefix_caching)
        self.prefix_cache = PrefixCacheCounters()
        self._prefill_seconds = 0.0
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._seqs: dict[str, _Seq] = {}
        self._preemptions_total = 0

    def add_request(self, request: EngineRequest, now: float) -> None:
        """Queue `request`, arrived at `now`; PromptTooLongError if it cannot fit."""
        if request.request_id in self._seqs:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        room = self.config.max_model_len - request.prompt_tokens
        if request.prompt_tokens < 1 or room < 1:
            raise PromptTooLongError(request.prompt_tokens, self.config.max_model_len)
        cap = room if request.max_tokens is None else min(room, request.max_tokens)
        natural = request.natural_output_tokens or self._sample_output_len()
        if request.ignore_eos:
            natural = self.config.max_model_len + 1  # only the caps end it
        natural = max(natural, request.min_tokens)
        seq = _Seq(
            request_id=request.request_id,
            prompt_tokens=request.prompt_tokens,
            target_output=max(1, min(natural, cap)),
            finish_reason="stop" if natural <= cap else "length",
            arrival=now,
            block_hashes=request.block_hashes,
        )
        self._seqs[seq.request_id] = seq
        self._waiting.append(seq)

    def abort(self, request_id: str, now: float) -> FinishedRequest | None:
        """Drop a request wherever it is, freeing its blocks; None if unknown or done."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return None
        if seq in self._running:
            self._running.remove(seq)
        else:
            self._waiting.remove(seq)
        return self._finish(seq, "abort", now)

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            num_gpu_blocks=self.config.num_gpu_blocks,
            num_free_blocks=self._pool.num_free,
            num_preemptions_total=self._preemptions_total,
            prefix_cache_queries_total=self.prefix_cache.queries,
            prefix_cache_hits_total=self.prefix_cache.hits,
            prefill_seconds_total=self._prefill_seconds,
        )

    def step(self, now: float) -> StepOutput:
        """Schedule one batch at `now`, run it, and report what it produced.

        The step's prefill cost is its duration minus what its decode chunks alone would
        take: the GPU time the prefix cache can save."""
        preempted: list[_Seq] = []
        queries = self.prefix_cache.queries, self.prefix_cache.hits
        scheduled, budget = self._schedule_running(preempted)
        if not preempted:
            scheduled += self._schedule_waiting(now, budget)
        decodes: list[ScheduledChunk] = []
        prefills: list[ScheduledChunk] = []
        for seq, n in scheduled:
            is_decode = n == 1 and seq.first_token_at is not None
            (decodes if is_decode else prefills).append(ScheduledChunk(seq.num_computed, n))
        duration, decode_only = self.config.cost.durations(decodes, prefills)
        prefill_s = duration - decode_only
        self._prefill_seconds += prefill_s
        out = self._complete(now, now + duration, scheduled, len(preempted))
        if prefill_s == 0.0 and self.prefix_cache.queries == queries[0]:
            return out
        return dataclasses.replace(
            out,
            prefix_cache_queries=self.prefix_cache.queries - queries[0],
            prefix_cache_hits=self.prefix_cache.hits - queries[1],
            prefill_seconds=prefill_s,
        )

    # -- scheduling ---------------------------------------------------------------

    def _schedule_running(self, preempted: list[_Seq]) -> tuple[list[tuple[_Seq, int]], int]:
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[_Seq, int]] = []
        index = 0
        while index < len(self._running) and budget > 0:
            seq = self._running[index]
            num_new = min(seq.num_tokens - seq.num_computed, budget)
            if not self._allocate_or_preempt(seq, num_new, preempted):
                break
            scheduled.append((seq, num_new))
            budget -= num_new
            index += 1
        return scheduled, budget

    def _allocate_or_preempt(self, seq: _Seq, num_new: int, preempted: list[_Seq]) -> bool:
        while not self._allocate(seq, num_new):
            victim = self._running.pop()
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _schedule_waiting(self, now: float, budget: int) -> list[tuple[_Seq, int]]:
        scheduled: list[tuple[_Seq, int]] = []
        while self._waiting and budget > 0 and len(self._running) < self.config.max_num_seqs:
            seq = self._waiting[0]
            num_new = self._admit(seq, budget)
            if num_new is None:
                break
            self._waiting.popleft()
            self._running.append(seq)
            if seq.scheduled_at is None:
                seq.scheduled_at = now
            scheduled.append((seq, num_new))
            budget -= num_new
        return scheduled

    def _admit(self, seq: _Seq, budget: int) -> int | None:
        """Give a waiting `seq` its cached prefix and the blocks for its first chunk; the
        chunk's token count, or None (nothing taken) when the blocks do not fit."""
        size = self.config.block_size
        hit = self._pool.longest_hit(seq.block_hashes, (seq.num_tokens - 1) // size)
        hit_tokens = len(hit) * size
        num_new = min(seq.num_tokens - hit_tokens, budget)
        needed = math.ceil((hit_tokens + num_new) / size) - len(hit)
        if needed > self._pool.free_after_touch(hit):
            return None
        self._pool.touch(hit)
        seq.block_ids = hit + self._pool.allocate(needed)
        seq.num_cached_blocks = len(hit)
        seq.num_computed = hit_tokens
        if seq.block_hashes:
            preempted = seq.num_preemptions > 0
            self.prefix_cache.record(seq.num_tokens, hit_tokens, preempted=preempted)
        if seq.cached_tokens is None:
            seq.cached_tokens = hit_tokens
        self._cache_full_blocks(seq, hit_tokens + num_new)
        return num_new

    def _allocate(self, seq: _Seq, num_new: int) -> bool:
        needed = -(-(seq.num_computed + num_new) // self.config.block_size) - len(seq.block_ids)
        if needed > 0:
            if needed > self._pool.num_free:
                return False
            seq.block_ids += self._pool.allocate(needed)
        if seq.num_cached_blocks < len(seq.block_hashes):
            self._cache_full_blocks(seq, seq.num_computed + num_new)
        return True

    def _cache_full_blocks(self, seq: _Seq, num_tokens: int) -> None:
        """Register the prompt blocks that are full once `num_tokens` are computed."""
        full = min(num_tokens // self.config.block_size, len(seq.block_hashes))
        for index in range(seq.num_cached_blocks, full):
            self._pool.cache(seq.block_ids[index], seq.block_hashes[index])
        seq.num_cached_blocks = max(seq.num_cached_blocks, full)

    def _release(self, seq: _Seq) -> None:
        self._pool.free(seq.block_ids)
        seq.block_ids = []
        seq.num_cached_blocks = 0

    def _preempt(self, seq: _Seq) -> None:
        self._release(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        self._preemptions_total += 1
        self._waiting.appendleft(seq)

    # -- completing a step --------------------------------------------------------

    def _complete(
        self, start: float, end: float, scheduled: list[tuple[_Seq, int]], preemptions: int
    ) -> StepOutput:
        tokens: list[TokenEvent] = []
        finished: list[FinishedRequest] = []
        ttfts: list[float] = []
        itls: list[float] = []
        prompt_tokens = cached_prompt_tokens = 0
        for seq, num_new in scheduled:
            seq.num_computed += num_new
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk that did not reach the end of the sequence
            if seq.first_token_at is None:
                seq.first_token_at = end
                ttfts.append(end - seq.arrival)
                prompt_tokens += seq.prompt_tokens
                cached_prompt_tokens += seq.cached_tokens or 0
            else:
                itls.append(end - (seq.last_token_at or end))
            seq.last_token_at = end
            seq.output += 1
            is_last = seq.output >= seq.target_output
            reason = seq.finish_reason if is_last else None
            cached = seq.cached_tokens or 0
            tokens.append(TokenEvent(seq.request_id, seq.output - 1, end, reason, cached))
            if is_last:
                finished.append(self._finish(seq, seq.finish_reason, end))
        if finished:
            self._running = [seq for seq in self._running if not seq.done]
        return StepOutput(
            start=start,
            end=end,
            num_scheduled_tokens=sum(n for _, n in scheduled),
            tokens=tuple(tokens),
            finished=tuple(finished),
            ttfts=tuple(ttfts),
            inter_token_latencies=tuple(itls),
            prompt_tokens=prompt_tokens,
            generation_tokens=len(tokens),
            preemptions=preemptions,
            cached_prompt_tokens=cached_prompt_tokens,
        )

    def _finish(self, seq: _Seq, reason: str, now: float) -> FinishedRequest:
        self._release(seq)
        seq.done = True
        del self._seqs[seq.request_id]
        first, last, scheduled = seq.first_token_at, seq.last_token_at, seq.scheduled_at
        return FinishedRequest(
            request_id=seq.request_id,
            finish_reason=reason,
            prompt_tokens=seq.prompt_tokens,
            output_tokens=seq.output,
            arrival_time=seq.arrival,
            finished_time=now,
            queue_time=None if scheduled is None else scheduled - seq.arrival,
            ttft=None if first is None else first - seq.arrival,
            prefill_time=None if first is None or scheduled is None else first - scheduled,
            decode_time=None if first is None or last is None else last - first,
            num_preemptions=seq.num_preemptions,
            cached_tokens=seq.cached_tokens or 0,
        )

    def _sample_output_len(self) -> int:
        median, sigma = self.config.output_len_median, self.config.output_len_sigma
        return max(1, round(self._rng.lognormvariate(math.log(median), sigma)))


__all__ = [
    "Engine",
    "EngineConfig",
    "EngineRequest",
    "EngineStats",
    "FinishedRequest",
    "PromptTooLongError",
    "StepOutput",
    "TokenEvent",
]
