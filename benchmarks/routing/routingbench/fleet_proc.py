"""A fresh simulated fleet in its own process: ``python -m routingbench.fleet_proc``.

Starts the packaged default fleet (every backend on a free loopback port) at ``--time-scale``,
with the answer key in ``--answer-key`` (JSON ``{prompt: [task, answer, wrong answer?]}``,
written by :func:`write_answer_key`, so each request's answer has the trace's output length) or,
without it, the workloads' answer key and near misses (the profiler's packaged samples). Prints one JSON line
``{"urls": {...}}`` once every backend listens. While it runs it samples every backend's lag
(how far the engine's simulated clock trails wall time x time scale) every ``SAMPLE_S``; on
SIGTERM/SIGINT it writes those figures to ``--stats`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvloop

from quantroute.sim.fleet import SimFleet, SimFleetConfig, load_fleet_config
from routingbench import workload

SAMPLE_S = 0.05


def fleet_config(
    time_scale: float,
    seed: int,
    kv_blocks: Mapping[str, int] | None = None,
    fleet_file: Path | None = None,
) -> SimFleetConfig:
    """The packaged default fleet (or ``fleet_file``) on free ports, at ``time_scale``;
    ``kv_blocks`` shrinks KV caches (vLLM's ``--num-gpu-blocks-override``) by backend id."""
    base = load_fleet_config(fleet_file).model_dump()
    blocks = kv_blocks or {}
    backends = [
        {
            **b,
            "port": 0,
            "num_gpu_blocks_override": blocks.get(b["id"], b["num_gpu_blocks_override"]),
        }
        for b in base["backends"]
    ]
    return SimFleetConfig.model_validate(
        {**base, "time_scale": time_scale, "seed": seed, "backends": backends}
    )


class LagMeter:
    """Per backend: max lag and the share of busy samples lagging over 10 ms (simulated)."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.max_s: dict[str, float] = dict.fromkeys(fleet.backends, 0.0)
        self.busy: dict[str, int] = dict.fromkeys(fleet.backends, 0)
        self.over_10ms: dict[str, int] = dict.fromkeys(fleet.backends, 0)
        self.total_s: dict[str, float] = dict.fromkeys(fleet.backends, 0.0)

    def sample(self) -> None:
        for backend_id, backend in self.fleet.backends.items():
            if not backend.engine.has_work():
                continue
            lag = backend.lag_s
            self.busy[backend_id] += 1
            self.total_s[backend_id] += lag
            self.over_10ms[backend_id] += lag > 0.010
            self.max_s[backend_id] = max(self.max_s[backend_id], lag)

    def report(self) -> dict[str, dict[str, float]]:
        """Lag figures per backend, and the engine's simulated GPU seconds spent on prefill."""
        engines = self.fleet.engines
        return {
            b: {
                "prefill_gpu_s": round(engines[b].stats().prefill_seconds_total, 4),
                "max_lag_s": round(self.max_s[b], 4),
                "mean_lag_s": round(self.total_s[b] / max(1, self.busy[b]), 4),
                "share_over_10ms": round(self.over_10ms[b] / max(1, self.busy[b]), 4),
                "busy_samples": self.busy[b],
            }
            for b in self.max_s
        }


def write_answer_key(path: Path, rows: Sequence[workload.TraceRequest]) -> None:
    path.write_text(json.dumps(workload.answer_key(rows)), encoding="utf-8")


def read_answer_key(path: Path) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(answer key, wrong answers) from a JSON file of ``{prompt: [task, answer, wrong?]}``."""
    raw: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    key = {prompt: (entry[0], entry[1]) for prompt, entry in raw.items()}
    wrong = {prompt: entry[2] for prompt, entry in raw.items() if len(entry) > 2}
    return key, wrong


async def serve(config: SimFleetConfig, key_path: Path | None, stats: Path | None) -> None:
    answer_key, wrong = (None, None) if key_path is None else read_answer_key(key_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SimFleet(config, answer_key=answer_key, wrong_answers=wrong) as fleet:
        meter = LagMeter(fleet)
        print(json.dumps({"urls": fleet.urls}), flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)
            meter.sample()
        if stats is not None:
            await asyncio.to_thread(_write, stats, json.dumps(meter.report(), indent=1))


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time-scale", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-key", type=Path, default=None)
    parser.add_argument("--stats", type=Path, default=None)
    parser.add_argument("--fleet", type=Path, default=None, help="a fleet YAML (default: packaged)")
    parser.add_argument(
        "--kv-blocks",
        action="append",
        default=[],
        metavar="ID=BLOCKS",
        help="num_gpu_blocks_override for one backend (repeatable)",
    )
    args = parser.parse_args(argv)
    blocks = {k: int(v) for k, v in (item.split("=", 1) for item in args.kv_blocks)}
    config = fleet_config(args.time_scale, args.seed, blocks, args.fleet)
    uvloop.run(serve(config, args.answer_key, args.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
