"""How long one engine step takes on a GPU: a roofline model.

A step runs the model once over every scheduled token. It is bound either by memory
(stream all weights once, plus every scheduled sequence's KV cache) or by compute
(2 FLOP per parameter per token, plus attention over the context), whichever is
slower, plus a host-side overhead per step and per sequence. Decode steps of small
batches are memory bound; prefill chunks are compute bound; big decode batches with
long contexts become bound by reading their KV cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from quantroute.sim.profiles import EngineDefaults, GpuProfile, VariantProfile


@dataclass(frozen=True)
class ScheduledChunk:
    """One sequence's share of a step: tokens already cached, tokens computed now."""

    num_cached: int
    num_new: int


@dataclass(frozen=True)
class StepCostModel:
    """Roofline constants of one variant on one GPU (with tensor parallelism)."""

    weight_bytes: float
    kv_bytes_per_token: int
    num_params: float
    num_layers: int
    attention_width: int
    bandwidth: float
    flops: float
    step_overhead_s: float
    per_seq_overhead_s: float

    @classmethod
    def from_profiles(
        cls, variant: VariantProfile, gpu: GpuProfile, defaults: EngineDefaults
    ) -> StepCostModel:
        """Effective bandwidth and FLOPs: peak x efficiency x tensor-parallel ranks."""
        tp = variant.tensor_parallel_size
        return cls(
            weight_bytes=variant.weight_bytes,
            kv_bytes_per_token=variant.kv_bytes_per_token,
            num_params=variant.num_params,
            num_layers=variant.num_layers,
            attention_width=variant.attention_width,
            bandwidth=gpu.memory_bandwidth * gpu.bandwidth_efficiency * tp,
            flops=gpu.peak_flops * gpu.compute_efficiency * variant.kernel_compute_factor * tp,
            step_overhead_s=defaults.step_overhead_s,
            per_seq_overhead_s=defaults.per_seq_overhead_s,
        )

    def memory_bytes(self, chunks: Iterable[ScheduledChunk]) -> float:
        """Weights read once, each sequence's KV read, the new tokens' KV written."""
        kv_tokens = sum(c.num_cached + 2 * c.num_new for c in chunks)
        return self.weight_bytes + kv_tokens * self.kv_bytes_per_token

    def flop_count(self, chunks: Iterable[ScheduledChunk]) -> float:
        """Dense layers (2 x params per token) plus causal attention (QK^T and AV)."""
        dense = 0.0
        attention = 0.0
        for c in chunks:
            dense += 2.0 * self.num_params * c.num_new
            mean_context = c.num_cached + (c.num_new + 1) / 2.0
            attention += 4.0 * self.num_layers * self.attention_width * c.num_new * mean_context
        return dense + attention

    def durations(
        self, decodes: Sequence[ScheduledChunk], prefills: Sequence[ScheduledChunk]
    ) -> tuple[float, float]:
        """(seconds for the whole step, seconds its decode chunks alone would take), in one
        pass: the difference is what the step's prefill chunks cost."""
        if not prefills:
            total = self.duration(list(decodes))
            return total, total
        decode_only = self.duration(list(decodes))
        if not decodes:
            return self.duration(list(prefills)), decode_only
        kv = sum(c.num_cached + 2 * c.num_new for c in decodes)
        flops = self.flop_count(decodes)
        kv_all = kv + sum(c.num_cached + 2 * c.num_new for c in prefills)
        flops_all = flops + self.flop_count(prefills)
        memory_time = (self.weight_bytes + kv_all * self.kv_bytes_per_token) / self.bandwidth
        host = self.step_overhead_s + self.per_seq_overhead_s * (len(decodes) + len(prefills))
        return max(memory_time, flops_all / self.flops) + host, decode_only

    def duration(self, chunks: list[ScheduledChunk]) -> float:
        """Seconds for one step over `chunks`; an empty step costs only the overhead."""
        if not chunks:
            return self.step_overhead_s
        memory_time = self.memory_bytes(chunks) / self.bandwidth
        compute_time = self.flop_count(chunks) / self.flops
        host = self.step_overhead_s + self.per_seq_overhead_s * len(chunks)
        return max(memory_time, compute_time) + host
