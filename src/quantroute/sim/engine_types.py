"""The values the simulated engine takes and reports (see `engine.Engine`)."""

from __future__ import annotations

from dataclasses import dataclass

from quantroute.sim.kv_blocks import BlockHash
from quantroute.sim.profiles import EngineDefaults, GpuProfile, VariantProfile, num_gpu_blocks
from quantroute.sim.roofline import StepCostModel


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
    enable_prefix_caching: bool = True

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
        enable_prefix_caching: bool = True,
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
            enable_prefix_caching=enable_prefix_caching,
        )


@dataclass(frozen=True)
class EngineRequest:
    """A request as the engine sees it: token counts only.

    `natural_output_tokens` is where the model would stop by itself (finish "stop");
    None samples it from the engine's seeded length distribution. `ignore_eos` and
    `min_tokens` are vLLM's sampling parameters: never stop early / not before.
    `block_hashes` are the chained hashes of the prompt's full blocks
    (`kv_blocks.block_hashes`); without them nothing is looked up or cached.
    """

    request_id: str
    prompt_tokens: int
    max_tokens: int | None = None
    natural_output_tokens: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    block_hashes: tuple[BlockHash, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """Output token `index` (0-based) of a request, available at simulated `time`."""

    request_id: str
    index: int
    time: float
    finish_reason: str | None = None
    cached_tokens: int = 0
    """Prompt tokens the request found in the prefix cache when first admitted."""


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
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache when the request was first admitted."""

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
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    cached_prompt_tokens: int = 0
    """Of `prompt_tokens` (prompts that produced their first token), those read from cache."""
    prefill_seconds: float = 0.0
    """The share of this step's duration that its prefill chunks cost (see `Engine.step`)."""


@dataclass(frozen=True)
class EngineStats:
    """The gauges a scrape reads."""

    num_running: int
    num_waiting: int
    num_gpu_blocks: int
    num_free_blocks: int
    num_preemptions_total: int
    prefix_cache_queries_total: int = 0
    prefix_cache_hits_total: int = 0
    prefill_seconds_total: float = 0.0
    """Simulated GPU seconds spent on prefill chunks (compute not saved by the cache)."""

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of KV blocks in use, 0-1, like `vllm:kv_cache_usage_perc`."""
        return 1.0 - self.num_free_blocks / self.num_gpu_blocks
