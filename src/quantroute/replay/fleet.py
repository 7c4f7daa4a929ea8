"""The simulated fleet a gateway config describes: one pure engine per backend.

Each backend runs the simulator profile named by its ``variant`` (else its
``served_model_name``; ``profiles`` maps other names), with the config's ``max_seq_len`` and
``capacity`` as vLLM's ``--max-model-len`` and ``--max-num-seqs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from quantroute.config import GatewayConfig
from quantroute.core.model import BackendMetrics
from quantroute.errors import ConfigError
from quantroute.sim.engine import Engine, EngineConfig
from quantroute.sim.profiles import ProfileBook, load_profiles


@dataclass(eq=False)
class SimulatedBackend:
    id: str
    variant: str
    profile: str
    engine: Engine
    busy: bool = False
    """A step is running (its end is scheduled)."""

    def metrics(self) -> BackendMetrics:
        """What a scrape of this backend's ``/metrics`` would read now."""
        stats = self.engine.stats()
        return BackendMetrics(
            kv_cache_usage=stats.kv_cache_usage,
            num_running=float(stats.num_running),
            num_waiting=float(stats.num_waiting),
            num_gpu_blocks=stats.num_gpu_blocks,
            block_size=self.engine.config.block_size,
        )


def profile_for(name: str, served: str, book: ProfileBook, profiles: Mapping[str, str]) -> str:
    for candidate in (profiles.get(name), name, served):
        if candidate is not None and candidate in book.variants:
            return candidate
    known = ", ".join(book.generative())
    raise ConfigError(
        f"backend variant {name!r}: no simulator profile of that name (known: {known}); "
        f"map it with --profile {name}=<profile>"
    )


def build_fleet(
    config: GatewayConfig,
    *,
    seed: int = 0,
    profiles: Mapping[str, str] | None = None,
    book: ProfileBook | None = None,
    throttle: Mapping[str, float] | None = None,
) -> dict[str, SimulatedBackend]:
    """Fresh engines for the config's generative backends (seeded per backend). ``throttle``:
    backend id -> speed in (0, 1], its GPU's FLOPs and memory bandwidth scaled by it (a replica
    slower than its variant's profile: thermal throttling, a noisy neighbour)."""
    book = book or load_profiles()
    fleet: dict[str, SimulatedBackend] = {}
    for index, backend in enumerate(config.backends):
        if "chat" not in backend.apis and "completions" not in backend.apis:
            continue
        name = profile_for(backend.variant_id, backend.served_model_name, book, profiles or {})
        variant = book.variant(name)
        gpu = book.gpu_of(variant)
        speed = (throttle or {}).get(backend.id, 1.0)
        if speed != 1.0:
            gpu = gpu.model_copy(
                update={
                    "peak_flops": gpu.peak_flops * speed,
                    "memory_bandwidth": gpu.memory_bandwidth * speed,
                }
            )
        engine_config = EngineConfig.from_profile(
            variant,
            gpu,
            book.engine,
            max_model_len=backend.max_seq_len,
            max_num_seqs=backend.capacity,
            seed=seed * 7919 + index,
        )
        fleet[backend.id] = SimulatedBackend(
            backend.id, backend.variant_id, name, Engine(engine_config)
        )
    return fleet
