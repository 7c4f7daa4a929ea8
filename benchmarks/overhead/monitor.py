"""What the machine did during a measurement window: CPU per process and per core, gateway RSS.

Other engineers share this 2-core machine, so every window records how busy each core was
*apart from* the benchmark's own processes ("foreign" CPU): a figure taken while core 1 was 30%
foreign is not the gateway's figure.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import procs

RSS_EVERY_S = 0.1


@dataclass(frozen=True)
class Usage:
    window_s: float
    gateway_cpu_s: float
    core0_ours_cpu_s: float
    core_busy_s: dict[str, float]
    core_steal_s: dict[str, float]
    rss_peak_kb: int

    def pct(self, seconds: float) -> float:
        return 100.0 * seconds / self.window_s if self.window_s > 0 else 0.0

    @property
    def gateway_cpu_pct(self) -> float:
        return self.pct(self.gateway_cpu_s)

    @property
    def foreign_pct(self) -> dict[str, float]:
        """Busy % of each core minus what our processes on it used (never below 0)."""
        ours = {"cpu0": self.core0_ours_cpu_s, "cpu1": self.gateway_cpu_s}
        return {
            core: max(0.0, self.pct(busy - ours.get(core, 0.0)))
            for core, busy in self.core_busy_s.items()
        }


@dataclass(frozen=True)
class _Mark:
    at: float
    gateway: float
    core0: float
    cores: dict[str, tuple[float, float]]


class Monitor:
    """Samples the gateway (``gateway_pid``) and the core-0 processes around a window."""

    def __init__(self, gateway_pid: int | None, core0_pids: list[int]) -> None:
        self.gateway_pid = gateway_pid
        self.core0_pids = core0_pids
        self.last: Usage | None = None

    def _mark(self) -> _Mark:
        gateway = procs.cpu_seconds(self.gateway_pid) if self.gateway_pid else 0.0
        core0 = time.process_time() + sum(procs.cpu_seconds(p) for p in self.core0_pids)
        return _Mark(time.perf_counter(), gateway, core0, procs.core_times())

    def _rss(self) -> int:
        if not self.gateway_pid:
            return 0
        return procs.status_kb(self.gateway_pid, "VmRSS") or 0

    async def watch(self, start: float, end: float) -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        first = self._mark()
        peak = self._rss()
        while time.perf_counter() < end:
            await asyncio.sleep(min(RSS_EVERY_S, max(0.0, end - time.perf_counter())))
            peak = max(peak, self._rss())
        last = self._mark()
        self.last = Usage(
            window_s=last.at - first.at,
            gateway_cpu_s=last.gateway - first.gateway,
            core0_ours_cpu_s=last.core0 - first.core0,
            core_busy_s={c: last.cores[c][0] - first.cores[c][0] for c in last.cores},
            core_steal_s={c: last.cores[c][1] - first.cores[c][1] for c in last.cores},
            rss_peak_kb=peak,
        )
