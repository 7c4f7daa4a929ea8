"""Builders for routing-core tests: backends, snapshots and features as plain values."""

from __future__ import annotations

from quantroute.config import GENERATIVE_APIS, ApiName, BackendConfig, GroupConfig, PolicyConfig
from quantroute.core.matrix import CapabilityMatrix, Percentiles, TaskProfile, VariantProfile
from quantroute.core.model import BackendMetrics, BackendState, Health, RequestFeatures, Snapshot
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
    return BackendState(cfg, health, metrics, 0.1, pending, pending_kv)


def snapshot(*backends: BackendState) -> Snapshot:
    return Snapshot(taken_at=100.0, backends=tuple(backends))


def features(
    model: str = "auto", prompt: int = 100, max_tokens: int | None = 100, **kw: object
) -> RequestFeatures:
    return RequestFeatures(model=model, prompt_tokens=prompt, max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


def policy(variants: tuple[str, ...], floor: float = 0.0, **kw: object) -> Policy:
    """A policy with one group ``auto`` of ``variants``; ``kw`` as a config file's policy section."""
    group = GroupConfig(name="auto", variants=variants, quality_floor=floor)
    return Policy(PolicyConfig.model_validate(kw), (group,))


def matrix(**variants: dict[str, object]) -> CapabilityMatrix:
    profiles = {}
    for name, spec in variants.items():
        tasks = {
            t: TaskProfile(quality=q, stable=spec.get("stable", True))
            for t, q in spec.get("quality", {}).items()
        }  # type: ignore[union-attr]
        profiles[name] = VariantProfile(
            ttft_ms=Percentiles(p50=spec.get("ttft")),  # type: ignore[arg-type]
            cost_per_1m_output_tokens=spec.get("cost"),  # type: ignore[arg-type]
            tasks=tasks,
        )
    return CapabilityMatrix(schema_version=1, generated_at="2026-11-24", variants=profiles)
