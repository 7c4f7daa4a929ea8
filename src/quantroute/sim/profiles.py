"""GPU and model-variant profiles for the simulator, loaded from packaged YAML.

`profiles.yaml` beside this module holds the numbers and where each comes from. This
module only types them and derives what follows from them (KV bytes per token, the
number of KV blocks vLLM would allocate).
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from quantroute.base import FrozenModel

TaskType = Literal["coding", "reasoning", "extraction", "chat"]
TASK_TYPES: tuple[TaskType, ...] = ("coding", "reasoning", "extraction", "chat")


class GpuProfile(FrozenModel):
    """Peak numbers of one GPU model and how much of them serving achieves."""

    name: str
    memory_bytes: int = Field(gt=0)
    memory_bandwidth: float = Field(gt=0, description="bytes per second")
    peak_flops: float = Field(gt=0, description="dense FP16/BF16 FLOP per second")
    bandwidth_efficiency: float = Field(gt=0, le=1)
    compute_efficiency: float = Field(gt=0, le=1)
    default_max_num_batched_tokens: int = Field(gt=0)


class EngineDefaults(FrozenModel):
    """Host-side step costs and natural answer lengths shared by every variant."""

    block_size: int = Field(gt=0)
    step_overhead_s: float = Field(ge=0)
    per_seq_overhead_s: float = Field(ge=0)
    output_len_median: float = Field(gt=0)
    output_len_sigma: float = Field(ge=0)


class Quality(FrozenModel):
    """Probability of a correct answer per task type."""

    coding: float = Field(ge=0, le=1)
    reasoning: float = Field(ge=0, le=1)
    extraction: float = Field(ge=0, le=1)
    chat: float = Field(ge=0, le=1)

    def for_task(self, task: str) -> float:
        """The probability for `task`; unknown task types count as chat."""
        value: float = getattr(self, task) if task in TASK_TYPES else self.chat
        return value


class VariantProfile(FrozenModel):
    """One served model variant: architecture, weights, deployment defaults, quality."""

    model: str
    gpu: str
    tensor_parallel_size: int = Field(ge=1)
    quantization: str
    num_params: float = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    kv_dtype_bytes: int = Field(gt=0)
    weight_bytes: float = Field(gt=0)
    runtime_overhead_bytes: float = Field(ge=0)
    kernel_compute_factor: float = Field(gt=0, le=1)
    max_model_len: int = Field(gt=0)
    max_num_seqs: int = Field(gt=0)
    quality: Quality
    runner: Literal["generate", "pooling"] = "generate"
    embedding_dim: int | None = Field(default=None, gt=0)

    @property
    def kv_bytes_per_token(self) -> int:
        """Layers x KV heads x head dim x 2 (K and V) x dtype bytes."""
        return self.num_layers * self.num_kv_heads * self.head_dim * 2 * self.kv_dtype_bytes

    @property
    def attention_width(self) -> int:
        """Query heads x head dim: the width attention FLOPs scale with."""
        return self.num_attention_heads * self.head_dim


class ProfileBook(FrozenModel):
    """Every GPU and variant profile, cross-checked."""

    gpus: dict[str, GpuProfile]
    engine: EngineDefaults
    variants: dict[str, VariantProfile]

    @model_validator(mode="after")
    def _gpus_exist(self) -> ProfileBook:
        for name, variant in self.variants.items():
            if variant.gpu not in self.gpus:
                raise ValueError(f"variant {name!r} names unknown gpu {variant.gpu!r}")
        return self

    def variant(self, name: str) -> VariantProfile:
        """The variant profile called `name`; KeyError names the known ones."""
        try:
            return self.variants[name]
        except KeyError:
            known = ", ".join(sorted(self.variants))
            raise KeyError(f"unknown simulator profile {name!r} (known: {known})") from None

    def generative(self) -> list[str]:
        """Names of the variants that generate text (not embedding models), sorted."""
        return sorted(n for n, v in self.variants.items() if v.runner == "generate")

    def gpu_of(self, variant: VariantProfile) -> GpuProfile:
        """The GPU profile the variant runs on."""
        return self.gpus[variant.gpu]


def load_profiles(path: str | Path | None = None) -> ProfileBook:
    """Load `path`, or the packaged `profiles.yaml` when None."""
    if path is None:
        text = resources.files(__package__).joinpath("profiles.yaml").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    return ProfileBook.model_validate(yaml.safe_load(text))


def num_gpu_blocks(
    variant: VariantProfile,
    gpu: GpuProfile,
    *,
    gpu_memory_utilization: float,
    block_size: int,
) -> int:
    """KV blocks vLLM would allocate: what the memory budget leaves after the weights.

    (memory x utilization x TP - weights - runtime overhead) / (block size x KV bytes per
    token), each tensor-parallel rank holding its share of the KV heads.
    """
    budget = gpu.memory_bytes * gpu_memory_utilization * variant.tensor_parallel_size
    free = budget - variant.weight_bytes - variant.runtime_overhead_bytes
    if free <= 0:
        raise ValueError(
            f"no memory left for the KV cache: {variant.model} needs "
            f"{variant.weight_bytes + variant.runtime_overhead_bytes:.3g} bytes of "
            f"{budget:.3g} available at gpu_memory_utilization {gpu_memory_utilization}"
        )
    return math.floor(free / (block_size * variant.kv_bytes_per_token))
