"""Measured latency on and off, same traces, same run: what learning from observed TTFT changes.

    python benchmarks/routing/measured_latency_run.py              # 2000 requests per trace
    python benchmarks/routing/measured_latency_run.py --requests 500   # quick

Replays quantroute's default and tuned configs through ``quantroute.replay`` (simulated time,
deterministic) on replay_run.py's two traces (seeds 7 and 8, 20% batch), each with
``policy.measured_latency`` on (the default) and off (the matrix prior scaled by load alone),
and prints the p99 as a ratio to the "off" run of the same trace and to the trace's clairvoyant
floor. Twice: on the demo fleet (the matrix was profiled on the same simulator, so the prior is
already right and there is little to learn), and with a second 8B AWQ replica whose GPU runs at
35% speed (same variant, same prior: only measurement can tell it apart).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from replay_run import MATRIX, _config  # noqa: E402
from routingbench import policies  # noqa: E402

from quantroute.config import GatewayConfig  # noqa: E402
from quantroute.replay.measures import Summary, floor_p99, floor_ttfts, summarise  # noqa: E402
from quantroute.replay.simulate import replay  # noqa: E402
from quantroute.replay.synth import TraceParams, generate  # noqa: E402
from quantroute.state.matrix_source import load_matrix  # noqa: E402

TWIN = "llama3-8b-awq-slow"
"""A second replica of the 8B AWQ variant (same matrix prior) on a GPU throttled to ``SPEED``."""
SPEED = 0.35


def _with(config: GatewayConfig, measured: bool) -> GatewayConfig:
    policy = config.policy.model_copy(update={"measured_latency": measured})
    return config.model_copy(update={"policy": policy})


def _twin_spec(spec: policies.PolicySpec) -> policies.PolicySpec:
    rows = policies.demo_backends()
    twin = {**next(r for r in rows if r["id"] == "llama3-8b-awq"), "id": TWIN}
    twin["variant"] = "llama3-8b-awq"
    return replace(spec, backends=(*rows, twin))


def _config_of(spec: policies.PolicySpec) -> GatewayConfig:
    urls = {b["id"]: "http://127.0.0.1:9" for b in spec.backends or policies.demo_backends()}
    raw = policies.gateway_config(spec, urls, port=8080, time_scale=1.0, quality_floor=0.80,
                                  matrix_path=MATRIX)  # fmt: skip
    return policies.validated(raw)


def _ratio(on: float | None, off: float | None) -> str:
    return "–" if on is None or not off else f"×{on / off:.3f}"


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args(argv)
    started = time.monotonic()
    matrix = load_matrix(MATRIX)
    specs = {s.key: s for s in (*policies.specs(), *policies.extras())}
    reference = _config(specs["quantroute"])
    params = TraceParams(requests=args.requests, batch_share=0.2)
    print("| fleet | trace | policy | measured | p50 TTFT | p99 TTFT | × floor | p99 on/off | "
          "batch p99 | $/1M | meets floor | on the slow twin |")  # fmt: skip
    print("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for seed in (7, 8):
        rows = generate(replace(params, seed=seed))
        floor = floor_p99(floor_ttfts(rows, reference, matrix), rows)
        for fleet, throttle in (("demo", None), (f"demo + twin at {SPEED:.0%}", {TWIN: SPEED})):
            for key in ("quantroute", "quantroute_tuned"):
                spec = specs[key] if throttle is None else _twin_spec(specs[key])
                runs: dict[bool, tuple[Summary, float]] = {}
                for measured in (False, True):
                    config = _with(_config_of(spec), measured)
                    run = replay(rows, config, matrix, model_for=spec.model_for, throttle=throttle)
                    served = [r for r in run.results if r.ok]
                    twin = sum(r.backend == TWIN for r in served) / max(1, len(served))
                    runs[measured] = (summarise(run, reference, matrix), twin)
                off = runs[False][0]
                for measured, (s, twin) in runs.items():
                    x_floor = None if s.ttft_p99_s is None or not floor else s.ttft_p99_s / floor
                    print(
                        f"| {fleet} | seed {seed} | {spec.label} | {'on' if measured else 'off'} | "
                        f"{_s(s.ttft_p50_s)} s | {_s(s.ttft_p99_s)} s | ×{_s(x_floor)} | "
                        f"{_ratio(s.ttft_p99_s, off.ttft_p99_s)} | {_s(s.batch_ttft_p99_s)} s | "
                        f"{_s(s.cost_per_1m)} | {_pct(s.quality_share)} | "
                        f"{_pct(twin) if throttle else '–'} |",
                        flush=True,
                    )
    print(f"\n{args.requests} requests per trace, {time.monotonic() - started:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
