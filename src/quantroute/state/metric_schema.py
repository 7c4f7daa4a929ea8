"""The metric-schema self-test: does a backend's /metrics carry the names routing reads?

Run on a backend's first successful scrape. An engine that renamed its metrics, or a URL that
points at some other exporter, parses fine and yields nothing; without this check the only sign
is a backend that is never chosen. Pure: :class:`BackendMetrics` in, a report out.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantroute.core.model import BackendMetrics

_CHECKS: tuple[tuple[str, str, str], ...] = (
    (
        "kv_cache_usage",
        "vllm:kv_cache_usage_perc",
        "KV usage unknown: kv_ceiling turns the backend away (unknown is never read as 0)",
    ),
    (
        "num_running",
        "vllm:num_requests_running",
        "running requests unknown: load counts only what this gateway sent",
    ),
    (
        "num_waiting",
        "vllm:num_requests_waiting",
        "queue unknown: load counts only what this gateway sent",
    ),
    (
        "num_gpu_blocks",
        "vllm:cache_config_info",
        "KV capacity unknown: kv_pressure judges on current usage alone",
    ),
)


@dataclass(frozen=True, slots=True)
class SchemaReport:
    missing: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "missing": list(self.missing), "fallback": "; ".join(self.fallbacks)}

    def describe(self) -> str:
        return f"missing {', '.join(self.missing)}; fallback: {'; '.join(self.fallbacks)}"


def check_schema(metrics: BackendMetrics) -> SchemaReport:
    missing, fallbacks = [], []
    for field, name, fallback in _CHECKS:
        if getattr(metrics, field) is None:
            missing.append(name)
            fallbacks.append(fallback)
    return SchemaReport(tuple(missing), tuple(fallbacks))
