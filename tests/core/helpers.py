"""Builders for routing-core tests: backends, snapshots and features as plain values."""

from __future__ import annotations

from typing import TypedDict

from quantroute.config import (
    GENERATIVE_APIS,
    ApiName,
    BackendConfig,
    GroupConfig,
    PolicyConfig,
    TaskType,
)
from quantroute.core.matrix import CapabilityMatrix, Percentiles, TaskProfile, VariantProfile
from quantroute.core.model import (
    BackendMetrics,
    BackendState,
    Health,
    LatencyClass,
    RequestFeatures,
    Snapshot,
)
from quantroute.core.prefix import PrefixView
from quantroute.core.scheduler import Policy


def backend(
    id: str,
    *,
    kv: float | None = 0.1,
    running: float = 0,
    waiting: float = 0,
    health: Health = Health.FRESH,
    max_seq_len: int = 8192,
    capacity: int = 256,
    blocks: int | None = 1000,
    cost: float = 1.0,
    pending: int = 0,
    pending_kv: int = 0,
    apis: tuple[ApiName, ...] = GENERATIVE_APIS,
) -> BackendState:
    cfg = BackendConfig(
        id=id,
        url=f"http://{id}:8000",
        served_model_name=f"served-{id}",
        max_seq_len=max_seq_len,
        capacity=capacity,
        apis=apis,
        gpu_cost_per_hour=cost,
    )
    metrics = BackendMetrics(
        kv_cache_usage=kv,
        num_running=running,
        num_waiting=waiting,
        num_gpu_blocks=blocks,
        block_size=16,
    )
    return BackendState(cfg, health, metrics, pending, pending_kv)


def snapshot(*backends: BackendState) -> Snapshot:
    return Snapshot(taken_at=100.0, backends=tuple(backends))


def features(
    model: str = "auto",
    prompt: int = 100,
    max_tokens: int | None = 100,
    *,
    task: TaskType = "chat",
    latency_class: LatencyClass = LatencyClass.INTERACTIVE,
    sequence: int = 0,
    api: ApiName = "chat",
    prefix: PrefixView | None = None,
) -> RequestFeatures:
    return RequestFeatures(
        model=model,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        task=task,
        latency_class=latency_class,
        sequence=sequence,
        api=api,
        prefix=prefix,
    )


def policy(variants: tuple[str, ...], floor: float = 0.0, **kw: object) -> Policy:
    """A policy with one group ``auto`` of ``variants``; ``kw`` as a config file's policy section."""
    group = GroupConfig(name="auto", variants=variants, quality_floor=floor)
    return Policy(PolicyConfig.model_validate(kw), (group,))


class VariantSpec(TypedDict, total=False):
    quality: dict[TaskType, float]
    stable: bool
    ttft: float
    cost: float


def matrix(**variants: VariantSpec) -> CapabilityMatrix:
    profiles = {}
    for name, spec in variants.items():
        stable = spec.get("stable", True)
        tasks = {
            t: TaskProfile(quality=q, stable=stable) for t, q in spec.get("quality", {}).items()
        }
        profiles[name] = VariantProfile(
            ttft_ms=Percentiles(p50=spec.get("ttft")),
            cost_per_1m_output_tokens=spec.get("cost"),
            tasks=tasks,
        )
    return CapabilityMatrix(schema_version=1, generated_at="2026-11-24", variants=profiles)
