"""The compared policies: each one a gateway configuration of the same fleet, not a program.

The backends are the demo's (``quantroute/demo/gateway.yaml``: ids, served names, context
lengths, ``--max-num-seqs``, GPUs and prices) with the URLs of a fresh simulated fleet. Every
duration the gateway keeps in wall seconds is divided by the simulator's time scale, so the
gateway sees the backends as often, per simulated second, as it would at real speed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml

from quantroute.config import GatewayConfig, parse_config

SCRAPE_INTERVAL_S = 0.5
"""Simulated seconds between scrapes (the demo's setting)."""
STALENESS_LIMIT_S = 5.0
FIRST_BYTE_S = 3600.0
TOTAL_S = 7200.0
"""Upstream timeouts (simulated seconds) far above the default 120 s first byte: an overloaded
policy (all 70B) should show its queue in TTFT, not turn it into aborted streams."""
SEVENTY_B = "llama3-70b-awq"
EIGHT_B_FP16 = "llama3-8b-fp16"
ALL = ("llama3-8b-awq", "qwen25-7b-gptq", SEVENTY_B, EIGHT_B_FP16)


class Tiered(Protocol):
    """A request with a tier: the benchmark's TraceRequest over HTTP, a TraceRow in the replay."""

    @property
    def tier(self) -> str: ...


ModelFor = Callable[[Tiered], str]


def _auto(_: Tiered) -> str:
    return "auto"


def _by_tier(request: Tiered) -> str:
    return request.tier


@dataclass(frozen=True)
class PolicySpec:
    key: str
    label: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    policy: Mapping[str, Any] = field(default_factory=dict)
    matrix: bool = False
    model_for: ModelFor = _auto
    note: str = ""
    backends: tuple[Mapping[str, Any], ...] | None = None
    """The gateway's backends (without URLs) when not the demo fleet's."""
    session_header: bool = False
    """The replay sends ``x-session-id`` on conversation turns."""


def _weights(**w: float) -> dict[str, dict[str, float]]:
    full = {"headroom": 0.0, "latency": 0.0, "cost": 0.0, "least_loaded": 0.0, **w}
    return {"interactive": full, "batch": full}


def specs() -> tuple[PolicySpec, ...]:
    """The seven policies of issue 7, in report order."""
    auto = (("auto", ALL),)
    context_only = {"filters": ["context"]}
    return (
        PolicySpec(
            "static_tier", "static tier", (("premium", (SEVENTY_B,)), ("standard", (EIGHT_B_FP16,))),
            context_only, model_for=_by_tier, note="premium -> 70B, standard -> 8B FP16",
        ),
        PolicySpec("all_70b", "all 70B", (("auto", (SEVENTY_B,)),), context_only,
                   note="quality reference"),
        PolicySpec("round_robin", "round robin", auto, {**context_only, "picker": "round_robin"}),
        PolicySpec(
            "least_loaded", "least loaded", auto,
            {**context_only, "weights": _weights(least_loaded=1.0), "tie_tolerance": 0.0},
            note="fewest running + waiting + in flight",
        ),
        PolicySpec("quantroute", "quantroute", auto, {}, matrix=True,
                   note="matrix + KV pressure + queue (default filters and weights)"),
        PolicySpec("no_matrix", "quantroute w/o matrix", auto, {}, matrix=False),
        PolicySpec(
            "no_kv", "quantroute w/o KV pressure", auto,
            {"filters": ["context", "quality"],
             "weights": {"interactive": {"headroom": 0.0, "latency": 0.45, "cost": 0.15},
                         "batch": {"headroom": 0.0, "latency": 0.1, "cost": 0.55}}},
            matrix=True,
        ),
    )  # fmt: skip


TUNED: dict[str, Any] = {
    "latency_reference_ms": 250.0,
    "weights": {
        "interactive": {"headroom": 0.2, "latency": 0.7, "cost": 0.1},
        "batch": {"headroom": 0.35, "latency": 0.1, "cost": 0.55},
    },
    "quality_fallback": "best_available",
}
"""Interactive traffic weighted towards the latency estimate, which is made steeper (250 ms
reference): with the defaults, KV headroom and cost favour the backend with the largest cache
and the cheapest GPU (Qwen on L40S) almost as much as a multi-second expected wait counts. And a
request that fits only backends below the quality floor is served there instead of refused."""


def extras() -> tuple[PolicySpec, ...]:
    """Beyond the issue's seven: quantroute with its config tuned for this trace."""
    return (
        PolicySpec(
            "quantroute_tuned",
            "quantroute, tuned config",
            (("auto", ALL),),
            TUNED,
            matrix=True,
            note="interactive weights latency .7 / headroom .2 / cost .1, latency reference "
            "250 ms, quality_fallback best_available",
        ),
    )


def demo_backends() -> list[dict[str, Any]]:
    """The demo's generative backends (its embedding backend takes no part in chat routing)."""
    text = resources.files("quantroute.demo").joinpath("gateway.yaml").read_text("utf-8")
    rows: list[dict[str, Any]] = yaml.safe_load(text)["backends"]
    return [r for r in rows if "chat" in r.get("apis", ["chat"])]


def timing(time_scale: float) -> dict[str, Any]:
    """Gateway durations in wall seconds for backends running ``time_scale`` times faster."""
    return {
        "scrape_interval_s": SCRAPE_INTERVAL_S / time_scale,
        "staleness_limit_s": STALENESS_LIMIT_S / time_scale,
        "scrape_timeout_s": 2.0,
        "upstream_timeouts": {
            "connect_s": 5.0,
            "first_byte_s": FIRST_BYTE_S / time_scale,
            "total_s": TOTAL_S / time_scale,
        },
    }


def gateway_config(
    spec: PolicySpec,
    urls: Mapping[str, str],
    *,
    port: int,
    time_scale: float,
    quality_floor: float,
    matrix_path: Path | None,
) -> dict[str, Any]:
    """The gateway YAML (as a dict) of ``spec`` in front of the fleet at ``urls``."""
    rows = demo_backends() if spec.backends is None else [dict(b) for b in spec.backends]
    backends = [{**row, "url": urls[row["id"]]} for row in rows]
    groups = [
        {"name": name, "variants": list(variants), "quality_floor": quality_floor}
        for name, variants in spec.groups
    ]
    policy = {**timing(time_scale), **spec.policy}
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "backends": backends,
        "groups": groups,
        "policy": policy,
    }
    if spec.matrix:
        if matrix_path is None:
            raise ValueError(f"policy {spec.key} needs a capability matrix")
        config["matrix_path"] = str(matrix_path.resolve())
    return config


def validated(config: dict[str, Any]) -> GatewayConfig:
    return parse_config(config, "<routing benchmark policy>")
