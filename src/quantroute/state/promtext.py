"""Pure parsing of vLLM's Prometheus exposition text into :class:`BackendMetrics`.

Metric names are aliases tried in order, current name first: vLLM renamed
``vllm:gpu_cache_usage_perc`` to ``vllm:kv_cache_usage_perc``, and a parser that knows one name
must not read the other's absence as zero. A metric that is absent stays ``None``.
Series are aggregated across ``engine`` (data-parallel rank) and ``model_name`` labels: request
counts add up, block counts add up, and KV usage is the block-weighted mean of the engines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from prometheus_client.parser import text_string_to_metric_families

from quantroute.core.model import BackendMetrics

KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
CACHE_INFO = ("vllm:cache_config_info",)
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
WANTED = frozenset((*KV_USAGE, *RUNNING, *WAITING, *CACHE_INFO, *PREFIX_QUERIES, *PREFIX_HITS))
_FAMILIES = WANTED | {name.removesuffix("_total") for name in WANTED}
"""Names on HELP/TYPE lines: a counter's may name the family with or without ``_total``."""


def _relevant_lines(text: str) -> str:
    """Keep only the families we read: parsing a full vLLM page costs ~10x more."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            if len(parts) >= 3 and parts[2] in _FAMILIES:
                kept.append(line)
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in WANTED:
            kept.append(line)
    return "\n".join(kept) + "\n"


Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(text: str) -> Samples:
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(_relevant_lines(text)):
        for sample in family.samples:
            if sample.name in WANTED:
                found[sample.name].append((dict(sample.labels), float(sample.value)))
    return found


def _first(
    samples: Samples, aliases: Sequence[str]
) -> tuple[str | None, list[tuple[dict[str, str], float]]]:
    for name in aliases:
        if samples.get(name):
            return name, samples[name]
    return None, []


def _total(series: Iterable[tuple[dict[str, str], float]]) -> float | None:
    values = [v for _, v in series]
    return sum(values) if values else None


def _int_label(labels: dict[str, str], key: str) -> int | None:
    try:
        return int(labels[key])
    except (KeyError, ValueError):
        return None


def _blocks_by_engine(info: list[tuple[dict[str, str], float]]) -> dict[str, tuple[int, int]]:
    result: dict[str, tuple[int, int]] = {}
    for labels, _ in info:
        blocks, size = _int_label(labels, "num_gpu_blocks"), _int_label(labels, "block_size")
        if blocks is not None and size is not None:
            result[labels.get("engine", "0")] = (blocks, size)
    return result


def _kv_usage(
    series: list[tuple[dict[str, str], float]], blocks: dict[str, tuple[int, int]]
) -> float | None:
    if not series:
        return None
    per_engine = {labels.get("engine", "0"): value for labels, value in series}
    weights = {e: blocks[e][0] for e in per_engine if e in blocks}
    if len(weights) == len(per_engine) and sum(weights.values()) > 0:
        return sum(per_engine[e] * w for e, w in weights.items()) / sum(weights.values())
    return max(per_engine.values())


def parse_metrics(text: str) -> BackendMetrics:
    """Exposition text of one vLLM server -> what the router needs. Raises ValueError if malformed."""
    samples = _samples(text)
    kv_name, kv_series = _first(samples, KV_USAGE)
    blocks = _blocks_by_engine(_first(samples, CACHE_INFO)[1])
    running = _first(samples, RUNNING)[1]
    models = sorted({labels["model_name"] for labels, _ in running if "model_name" in labels})
    return BackendMetrics(
        kv_cache_usage=_kv_usage(kv_series, blocks),
        num_running=_total(running),
        num_waiting=_total(_first(samples, WAITING)[1]),
        num_gpu_blocks=sum(b for b, _ in blocks.values()) if blocks else None,
        block_size=next(iter(blocks.values()))[1] if blocks else None,
        model_names=tuple(models),
        kv_metric_name=kv_name,
        prefix_cache_queries=_total(_first(samples, PREFIX_QUERIES)[1]),
        prefix_cache_hits=_total(_first(samples, PREFIX_HITS)[1]),
    )
