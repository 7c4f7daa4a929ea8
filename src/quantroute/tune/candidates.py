"""Candidate policies: the config's own, and seeded variations of its weights, thresholds,
floors and flow control, each a config fragment merged over the config (:func:`apply`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from quantroute.config import GatewayConfig, PluginRef, ScorerRef, parse_config

TUNED_SCORERS = ("headroom", "latency", "cost")
REFERENCES_MS = (150.0, 250.0, 500.0, 1000.0)
PRESSURE = (0.75, 0.8, 0.85, 0.9)
FLOOR_SHIFTS = (0.0, 0.0, -0.05)
"""A candidate may lower every group's floor a little; its quality is still judged against the
config's own floors, so that costs it on the quality axis."""
ON_SATURATION = ("queue", "queue", "downgrade", "reject")
MAX_WAIT_S = (10.0, 30.0, 60.0)
MAX_QUEUE = (100, 1000)
WAITING_LIMITS: tuple[int | None, ...] = (None, None, 4, 8, 16)
"""The ``waiting`` filter's limit (vLLM's waiting queue at which a backend counts as saturated,
so requests wait in the gateway's queue, interactive first, instead of vLLM's); None: no
``waiting`` filter (saturation is the KV cache alone)."""


@dataclass(frozen=True)
class Candidate:
    name: str
    fragment: dict[str, Any]
    """What it changes, as a config fragment (``policy`` and, for floors, ``groups``)."""


def _weights(rng: random.Random) -> dict[str, float]:
    raw = {name: rng.random() for name in TUNED_SCORERS}
    total = sum(raw.values())
    return {k: round(v / total, 2) for k, v in raw.items()}


def _profile(refs: tuple[ScorerRef, ...], weights: dict[str, float]) -> list[dict[str, Any]]:
    """``refs`` with the tuned scorers' weights replaced (added if absent); others kept."""
    out = [
        {**r.model_dump(exclude_defaults=True), "name": r.name,
         "weight": weights.get(r.name, r.weight)}
        for r in refs
    ]  # fmt: skip
    named = {r.name for r in refs}
    out += [{"name": n, "weight": w} for n, w in weights.items() if n not in named]
    return out


def _filters(refs: tuple[PluginRef, ...], limit: int | None) -> list[dict[str, Any]]:
    """``refs`` with the ``waiting`` filter set to ``limit`` (removed for None)."""
    out = [r.model_dump(exclude_defaults=True) | {"name": r.name} for r in refs
           if r.name != "waiting"]  # fmt: skip
    if limit is not None:
        out.append({"name": "waiting", "parameters": {"limit": limit}})
    return out


def _flow(rng: random.Random) -> dict[str, Any]:
    return {
        "on_saturation": rng.choice(ON_SATURATION),
        "max_wait_s": rng.choice(MAX_WAIT_S),
        "max_queue_length": rng.choice(MAX_QUEUE),
    }


def _draw(config: GatewayConfig, rng: random.Random, number: int) -> Candidate:
    scorers = config.policy.scorers
    policy: dict[str, Any] = {
        "scorers": {
            "interactive": _profile(scorers.interactive, _weights(rng)),
            "batch": _profile(scorers.batch, _weights(rng)),
        },
        "latency_reference_ms": rng.choice(REFERENCES_MS),
        "kv_pressure_threshold": rng.choice(PRESSURE),
        "quality_fallback": rng.choice(("reject", "best_available")),
        "flow_control": _flow(rng),
    }
    limit = rng.choice(WAITING_LIMITS)
    current = next((r.parameters.get("limit") for r in config.policy.filters
                    if r.name == "waiting"), None)  # fmt: skip
    if limit != current:
        policy["filters"] = _filters(config.policy.filters, limit)
    fragment: dict[str, Any] = {"policy": policy}
    shift = rng.choice(FLOOR_SHIFTS)
    floors = shift and any(g.quality_floor > 0 for g in config.groups)
    own_modes = any(g.on_saturation is not None for g in config.groups)
    if floors or own_modes:
        # a group's own on_saturation would hide the drawn default: the candidate sets it too
        mode = policy["flow_control"]["on_saturation"]
        fragment["groups"] = [
            {
                **g.model_dump(mode="json", exclude_none=True),
                "quality_floor": round(max(0.0, g.quality_floor + shift), 3),
                **({"on_saturation": mode} if g.on_saturation is not None else {}),
            }
            for g in config.groups
        ]
    return Candidate(f"c{number:02d}", fragment)


def candidates(config: GatewayConfig, count: int, seed: int) -> list[Candidate]:
    """The config itself (``default``) and ``count - 1`` seeded variations."""
    rng = random.Random(seed)
    return [Candidate("default", {}), *(_draw(config, rng, n) for n in range(1, count))]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply(config: GatewayConfig, fragment: dict[str, Any]) -> GatewayConfig:
    """``config`` with ``fragment`` merged over it (mappings key by key, lists replaced)."""
    if not fragment:
        return config
    data = config.model_dump(mode="json", exclude_none=True)
    policy = data.get("policy", {})
    if "scorers" in fragment.get("policy", {}):
        policy.pop("weights", None)
    return parse_config(_merge(data, fragment), "<tune candidate>")
