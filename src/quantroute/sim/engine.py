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
  step that preempted.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from quantroute.sim.profiles import EngineDefaults, GpuProfile, VariantProfile, num_gpu_blocks
from quantroute.sim.roofline import ScheduledChunk, StepCostModel


class PromptTooLongError(ValueError):
    """The prompt leaves no room for output within `max_model_len`."""

    def __init__(self, prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(f"prompt of {prompt_tokens} tokens exceeds max_model_len {max_model_len}")
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs; `from_profile` derives it like vLLM's start-up."""

    num_gpu_blocks: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    cost: StepCostModel
    block_size: int = 16
    output_len_median: float = 200.0
    output_len_sigma: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        capacity = self.num_gpu_blocks * self.block_size
        if capacity < self.max_model_len:
            raise ValueError(
                f"the KV cache holds {capacity} tokens ({self.num_gpu_blocks} blocks of "
                f"{self.block_size}), fewer than max_model_len {self.max_model_len}"
            )

    @classmethod
    def from_profile(
        cls,
        variant: VariantProfile,
        gpu: GpuProfile,
        defaults: EngineDefaults,
        *,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        gpu_memory_utilization: float = 0.90,
        num_gpu_blocks_override: int | None = None,
        seed: int = 0,
    ) -> EngineConfig:
        """The engine vLLM would build for `variant` on `gpu` with these arguments."""
        blocks = num_gpu_blocks(
            variant,
            gpu,
            gpu_memory_utilization=gpu_memory_utilization,
            block_size=defaults.block_size,
        )
        return cls(
            num_gpu_blocks=num_gpu_blocks_override or blocks,
            max_model_len=max_model_len or variant.max_model_len,
            max_num_seqs=max_num_seqs or variant.max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens or gpu.default_max_num_batched_tokens,
            cost=StepCostModel.from_profiles(variant, gpu, defaults),
            block_size=defaults.block_size,
            output_len_median=defaults.output_len_median,
            output_len_sigma=defaults.output_len_sigma,
            seed=seed,
        )


@dataclass(frozen=True)
class EngineRequest:
    """A request as the engine sees it: token counts only.

    `natural_output_tokens` is where the model would stop by itself (finish "stop");
    None samples it from the engine's seeded length distribution. `ignore_eos` and
    `min_tokens` are vLLM's sampling parameters: never stop early / not before.
    """

    request_id: str
    prompt_tokens: int
    max_tokens: int | None = None
    natural_output_tokens: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0


@dataclass(frozen=True)
class TokenEvent:
    """Output token `index` (0-based) of a request, available at simulated `time`."""

    request_id: str
    index: int
    time: float
    finish_reason: str | None = None


@dataclass(frozen=True)
class FinishedRequest:
    """A request's life in simulated seconds; timings are None when never reached."""

    request_id: str
    finish_reason: str
    prompt_tokens: int
    output_tokens: int
    arrival_time: float
    finished_time: float
    queue_time: float | None
    ttft: float | None
    prefill_time: float | None
    decode_time: float | None
    num_preemptions: int

    @property
    def e2e_latency(self) -> float:
        return self.finished_time - self.arrival_time


@dataclass(frozen=True)
class StepOutput:
    """What one step did, stamped with its simulated start and end."""

    start: float
    end: float
    num_scheduled_tokens: int
    tokens: tuple[TokenEvent, ...]
    finished: tuple[FinishedRequest, ...]
    ttfts: tuple[float, ...]
    inter_token_latencies: tuple[float, ...]
    prompt_tokens: int
    generation_tokens: int
    preemptions: int


@dataclass(frozen=True)
class EngineStats:
    """The gauges a scrape reads."""

    num_running: int
    num_waiting: int
    num_gpu_blocks: int
    num_free_blocks: int
    num_preemptions_total: int

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of KV blocks in use, 0-1, like `vllm:kv_cache_usage_perc`."""
        return 1.0 - self.num_free_blocks / self.num_gpu_blocks


@dataclass(eq=False)
class _Seq:
    request_id: str
    prompt_tokens: int
    target_output: int
    finish_reason: str
    arrival: float
    output: int = 0
    num_computed: int = 0
    blocks: int = 0
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
        self._free_blocks = config.num_gpu_blocks
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
            num_free_blocks=self._free_blocks,
            num_preemptions_total=self._preemptions_total,
        )

    def step(self, now: float) -> StepOutput:
        """Schedule one batch at `now`, run it, and report what it produced."""
        preempted: list[_Seq] = []
        scheduled, budget = self._schedule_running(preempted)
        if not preempted:
            scheduled += self._schedule_waiting(now, budget)
        chunks = [ScheduledChunk(seq.num_computed, n) for seq, n in scheduled]
        end = now + self.config.cost.duration(chunks)
        return self._complete(now, end, scheduled, len(preempted))

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
            num_new = min(seq.num_tokens - seq.num_computed, budget)
            if not self._allocate(seq, num_new):
                break
            self._waiting.popleft()
            self._running.append(seq)
            if seq.scheduled_at is None:
                seq.scheduled_at = now
            scheduled.append((seq, num_new))
            budget -= num_new
        return scheduled

    def _allocate(self, seq: _Seq, num_new: int) -> bool:
        needed = math.ceil((seq.num_computed + num_new) / self.config.block_size) - seq.blocks
        if needed > self._free_blocks:
            return False
        if needed > 0:
            self._free_blocks -= needed
            seq.blocks += needed
        return True

    def _preempt(self, seq: _Seq) -> None:
        self._free_blocks += seq.blocks
        seq.blocks = 0
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
        prompt_tokens = 0
        for seq, num_new in scheduled:
            seq.num_computed += num_new
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk that did not reach the end of the sequence
            if seq.first_token_at is None:
                seq.first_token_at = end
                ttfts.append(end - seq.arrival)
                prompt_tokens += seq.prompt_tokens
            else:
                itls.append(end - (seq.last_token_at or end))
            seq.last_token_at = end
            seq.output += 1
            is_last = seq.output >= seq.target_output
            reason = seq.finish_reason if is_last else None
            tokens.append(TokenEvent(seq.request_id, seq.output - 1, end, reason))
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
        )

    def _finish(self, seq: _Seq, reason: str, now: float) -> FinishedRequest:
        self._free_blocks += seq.blocks
        seq.blocks = 0
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
        )

    def _sample_output_len(self) -> int:
        median, sigma = self.config.output_len_median, self.config.output_len_sigma
        return max(1, round(self._rng.lognormvariate(math.log(median), sigma)))
