"""vLLM's Prometheus metrics for one simulated server, on its own registry.

Names, types, help texts, label sets and histogram buckets are those of a real vLLM
0.32.0 `/metrics` page (see tests/fixtures/vllm/vllm_metrics_*.txt). Every series
carries `engine="0"` and `model_name`; latencies are in simulated seconds.

With `legacy_names`, the page looks like a vLLM from before the KV metric rename
(V1 up to 0.10): `vllm:gpu_cache_usage_perc` instead of `vllm:kv_cache_usage_perc`,
`vllm:time_per_output_token_seconds` instead of `vllm:inter_token_latency_seconds`,
`vllm:gpu_prefix_cache_queries/hits` instead of `vllm:prefix_cache_queries/hits`,
and no `vllm:num_requests_waiting_by_reason`.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from quantroute.sim.engine import EngineStats, FinishedRequest, StepOutput

ENGINE = "0"
# What vLLM's /metrics (prometheus_client's ASGI app) answers a plain GET with.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
WAITING_REASONS = ("capacity", "deferred")

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)

_LATENCY_HELP = {
    "vllm:e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
    "vllm:request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "vllm:request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "vllm:request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "vllm:request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
}


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value`, as vLLM builds token-count buckets."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(value)
        exponent += 1


class SimMetrics:
    """The metrics of one simulated vLLM server; `render()` is its `/metrics` body."""

    def __init__(
        self,
        model_name: str,
        *,
        max_model_len: int,
        cache_config: Mapping[str, str],
        legacy_names: bool = False,
    ) -> None:
        self.registry = CollectorRegistry()
        self.legacy_names = legacy_names
        self._labels = {"engine": ENGINE, "model_name": model_name}
        self._gauges(cache_config)
        self._counters()
        self._histograms(max_model_len)

    def _gauge(self, name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, ["engine", "model_name", *extra], registry=self.registry)

    def _gauges(self, cache_config: Mapping[str, str]) -> None:
        self.running = self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.waiting = self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.waiting_by_reason: Gauge | None = None
        if self.legacy_names:
            self.kv_usage = self._gauge(
                "vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage."
            )
        else:
            self.waiting_by_reason = self._gauge(
                "vllm:num_requests_waiting_by_reason",
                "Number of waiting requests by reason. Reason labels: 'capacity' = waiting "
                "for scheduling capacity; 'deferred' = deferred by transient constraints "
                "(LoRA budget, KV transfer, blocked status). Sum of all reasons equals "
                "vllm:num_requests_waiting.",
                ("reason",),
            )
            self.kv_usage = self._gauge(
                "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
            )
        info_labels = {"engine": ENGINE, **cache_config}
        info = Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            sorted(info_labels),
            registry=self.registry,
        )
        info.labels(**info_labels).set(1)

    def _counter(self, name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, ["engine", *extra, "model_name"], registry=self.registry)

    def _counters(self) -> None:
        self.preemptions = self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed."
        )
        self.generation_tokens = self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.success = self._counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ("finished_reason",),
        )
        for reason in FINISHED_REASONS:
            self.success.labels(finished_reason=reason, **self._labels)
        legacy = "gpu_" if self.legacy_names else ""
        self.prefix_queries = self._counter(
            f"vllm:{legacy}prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_hits = self._counter(
            f"vllm:{legacy}prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
        )
        self.prompt_tokens_cached = self._counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        self.prompt_by_source = self._counter(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", ("source",)
        )
        for source in PROMPT_SOURCES:
            self.prompt_by_source.labels(source=source, **self._labels)
        for counter in (
            self.preemptions,
            self.prompt_tokens,
            self.generation_tokens,
            self.prefix_queries,
            self.prefix_hits,
            self.prompt_tokens_cached,
        ):
            counter.labels(**self._labels)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        histogram = Histogram(
            name, doc, ["engine", "model_name"], buckets=buckets, registry=self.registry
        )
        histogram.labels(**self._labels)
        return histogram

    def _histograms(self, max_model_len: int) -> None:
        token_buckets = tuple(float(b) for b in build_1_2_5_buckets(max_model_len))
        self.request_prompt_tokens = self._histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = self._histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        )
        self.iteration_tokens = self._histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            tuple(float(b) for b in ITERATION_TOKEN_BUCKETS),
        )
        self.ttft = self._histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TTFT_BUCKETS,
        )
        self.itl = self._histogram(
            "vllm:time_per_output_token_seconds"
            if self.legacy_names
            else "vllm:inter_token_latency_seconds",
            "Histogram of time per output token in seconds."
            if self.legacy_names
            else "Histogram of inter-token latency in seconds.",
            ITL_BUCKETS,
        )
        self.latency = {
            name: self._histogram(name, doc, REQUEST_LATENCY_BUCKETS)
            for name, doc in _LATENCY_HELP.items()
        }
        self.prefill_computed = self._histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets,
        )
        self.request_preemptions = self._histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            tuple(float(b) for b in PREEMPTION_BUCKETS),
        )

    def observe_step(self, out: StepOutput) -> None:
        """Count what one engine step did."""
        labels = self._labels
        if out.num_scheduled_tokens:
            self.iteration_tokens.labels(**labels).observe(out.num_scheduled_tokens)
        self.preemptions.labels(**labels).inc(out.preemptions)
        self.prompt_tokens.labels(**labels).inc(out.prompt_tokens)
        self.generation_tokens.labels(**labels).inc(out.generation_tokens)
        self.prefix_queries.labels(**labels).inc(out.prefix_cache_queries)
        self.prefix_hits.labels(**labels).inc(out.prefix_cache_hits)
        self.prompt_tokens_cached.labels(**labels).inc(out.cached_prompt_tokens)
        by_source = self.prompt_by_source
        computed = out.prompt_tokens - out.cached_prompt_tokens
        by_source.labels(source="local_compute", **labels).inc(computed)
        by_source.labels(source="local_cache_hit", **labels).inc(out.cached_prompt_tokens)
        for ttft in out.ttfts:
            self.ttft.labels(**labels).observe(ttft)
        for itl in out.inter_token_latencies:
            self.itl.labels(**labels).observe(itl)
        for finished in out.finished:
            self.observe_finished(finished)

    def observe_finished(self, request: FinishedRequest) -> None:
        """Count a finished request; aborted ones only in `request_success_total`."""
        labels = self._labels
        self.success.labels(finished_reason=request.finish_reason, **labels).inc()
        if request.finish_reason == "abort":
            return
        self.request_prompt_tokens.labels(**labels).observe(request.prompt_tokens)
        self.request_generation_tokens.labels(**labels).observe(request.output_tokens)
        computed = request.prompt_tokens - request.cached_tokens
        self.prefill_computed.labels(**labels).observe(computed)
        self.request_preemptions.labels(**labels).observe(request.num_preemptions)
        phases = {
            "vllm:e2e_request_latency_seconds": request.e2e_latency,
            "vllm:request_queue_time_seconds": request.queue_time,
            "vllm:request_inference_time_seconds": _sum(request.prefill_time, request.decode_time),
            "vllm:request_prefill_time_seconds": request.prefill_time,
            "vllm:request_decode_time_seconds": request.decode_time,
        }
        for name, value in phases.items():
            if value is not None:
                self.latency[name].labels(**labels).observe(value)

    def set_state(self, stats: EngineStats) -> None:
        """Set the gauges from the engine's current state."""
        labels = self._labels
        self.running.labels(**labels).set(stats.num_running)
        self.waiting.labels(**labels).set(stats.num_waiting)
        self.kv_usage.labels(**labels).set(stats.kv_cache_usage)
        if self.waiting_by_reason is not None:
            self.waiting_by_reason.labels(reason="capacity", **labels).set(stats.num_waiting)
            self.waiting_by_reason.labels(reason="deferred", **labels).set(0)

    def render(self) -> bytes:
        """The exposition text of every metric."""
        return generate_latest(self.registry)


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def cache_config_labels(
    *,
    block_size: int,
    num_gpu_blocks: int,
    num_gpu_blocks_override: int | None,
    gpu_memory_utilization: float,
    kv_bytes_per_token: int,
    max_model_len: int,
    enable_prefix_caching: bool = True,
) -> dict[str, str]:
    """The `vllm:cache_config_info` labels, formatted as vLLM formats them (str())."""
    tokens = num_gpu_blocks * block_size
    return {
        "block_size": str(block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": str(enable_prefix_caching),
        "prefix_caching_hash_algo": "sha256",
        "gpu_memory_utilization": str(gpu_memory_utilization),
        "kv_cache_max_concurrency": str(round(tokens / max_model_len, 2)),
        "kv_cache_memory_bytes": str(tokens * kv_bytes_per_token),
        "kv_cache_size_tokens": str(tokens),
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(num_gpu_blocks),
        "num_gpu_blocks_override": str(num_gpu_blocks_override),
        "sliding_window": "None",
        "user_specified_block_size": "False",
    }
