"""/metrics against a real vLLM's: names, types, labels, and values that move."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig
from quantroute.sim.metrics import build_1_2_5_buckets

from .conftest import VLLM_FIXTURES, OpenAIFactory

REQUIRED = {
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:num_requests_waiting_by_reason": "gauge",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:cache_config_info": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:prompt_tokens_by_source": "counter",
    "vllm:request_prefill_kv_computed_tokens": "histogram",
}


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def label_names(family: Metric) -> set[str]:
    names: set[str] = set()
    for sample in family.samples:
        names |= set(sample.labels) - {"le"}
    return names


def value(fams: dict[str, Metric], name: str, **labels: str) -> float:
    for family in fams.values():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    raise KeyError((name, labels))


async def scrape(http: httpx.AsyncClient, url: str) -> dict[str, Metric]:
    response = await http.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return families(response.text)


async def test_names_types_and_labels_match_real_vllm(
    fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    real = families((VLLM_FIXTURES / "vllm_metrics_idle.txt").read_text())
    ours = await scrape(http, fleet.urls["awq"])
    assert {n: ours[n].type for n in REQUIRED} == REQUIRED
    for name, family in ours.items():
        assert name in real, f"{name} is not a vLLM metric"
        assert family.type == real[name].type, name
        assert family.documentation == real[name].documentation, name
        if name != "vllm:cache_config_info":
            assert label_names(family) == label_names(real[name]), name
    for sample in ours["vllm:kv_cache_usage_perc"].samples:
        assert sample.labels == {"engine": "0", "model_name": "llama3-8b-awq"}
    for name in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        buckets = [s.labels["le"] for s in ours[name].samples if s.name.endswith("_bucket")]
        real_buckets = [s.labels["le"] for s in real[name].samples if s.name.endswith("_bucket")]
        assert buckets == real_buckets


async def test_cache_config_info_describes_the_kv_cache(
    fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    ours = await scrape(http, fleet.urls["awq"])
    (info,) = ours["vllm:cache_config_info"].samples
    engine = fleet.engines["awq"]
    assert info.value == 1.0
    assert info.labels["block_size"] == "16"
    assert info.labels["num_gpu_blocks"] == str(engine.config.num_gpu_blocks)
    assert info.labels["kv_cache_size_tokens"] == str(engine.config.num_gpu_blocks * 16)
    assert info.labels["gpu_memory_utilization"] == "0.9"
    assert info.labels["engine"] == "0"
    assert info.labels["enable_prefix_caching"] == "True"  # vLLM V1's default, as captured


async def test_legacy_names(fleet: SimFleet, http: httpx.AsyncClient) -> None:
    ours = await scrape(http, fleet.urls["legacy"])
    assert ours["vllm:gpu_cache_usage_perc"].type == "gauge"
    assert "vllm:kv_cache_usage_perc" not in ours
    assert "vllm:num_requests_waiting_by_reason" not in ours
    assert ours["vllm:time_per_output_token_seconds"].type == "histogram"
    assert "vllm:inter_token_latency_seconds" not in ours
    assert ours["vllm:gpu_prefix_cache_queries"].type == "counter"
    assert "vllm:prefix_cache_queries" not in ours


async def test_counters_and_histograms_move_with_traffic(
    openai_for: OpenAIFactory, fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    api = openai_for(fleet.urls["awq"])
    results = await asyncio.gather(
        *(
            api.chat.completions.create(
                model="llama3-8b-awq",
                messages=[{"role": "user", "content": f"question {i}"}],
                max_tokens=10,
            )
            for i in range(5)
        )
    )
    fams = await scrape(http, fleet.urls["awq"])
    prompt = sum(r.usage.prompt_tokens for r in results if r.usage)
    assert value(fams, "vllm:prompt_tokens_total") == prompt
    assert value(fams, "vllm:generation_tokens_total") == 50
    assert value(fams, "vllm:request_success_total", finished_reason="length") == 5
    assert value(fams, "vllm:time_to_first_token_seconds_count") == 5
    assert value(fams, "vllm:inter_token_latency_seconds_count") == 45
    assert value(fams, "vllm:e2e_request_latency_seconds_count") == 5
    assert value(fams, "vllm:request_queue_time_seconds_count") == 5
    assert value(fams, "vllm:time_to_first_token_seconds_sum") > 0
    assert value(fams, "vllm:num_requests_running") == 0
    assert value(fams, "vllm:kv_cache_usage_perc") == 0


async def test_kv_pressure_queueing_and_preemption_show_on_metrics(
    openai_for: OpenAIFactory,
    http: httpx.AsyncClient,
) -> None:
    """Like the real capture with --num-gpu-blocks-override: a long-context burst on an
    8B L40S backend fills the KV cache, queues requests and preempts some."""
    prompts = [f"{i} " + "lorem ipsum " * 500 for i in range(10)]  # ~1500 tokens each
    answer = "step " * 1000 + "= 42"  # long answers: KV grows by 1000 tokens each
    key = {p: ("reasoning", answer) for p in prompts}
    spec = SimBackendSpec(id="l40s", profile="llama3-8b-awq", num_gpu_blocks_override=1024)
    async with SimFleet(SimFleetConfig(time_scale=50, backends=[spec]), answer_key=key) as fleet:
        api = openai_for(fleet.urls["l40s"])
        burst = [
            asyncio.create_task(
                api.chat.completions.create(
                    model="llama3-8b-awq",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=1000,
                )
            )
            for prompt in prompts  # 10 x 2500 tokens at the end, into 16384
        ]
        peak_usage, peak_waiting = 0.0, 0.0
        for _ in range(1000):
            fams = await scrape(http, fleet.urls["l40s"])
            peak_usage = max(peak_usage, value(fams, "vllm:kv_cache_usage_perc"))
            peak_waiting = max(peak_waiting, value(fams, "vllm:num_requests_waiting"))
            if all(task.done() for task in burst):
                break
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*burst)
        fams = await scrape(http, fleet.urls["l40s"])
    assert all(r.usage and r.usage.completion_tokens == 1000 for r in results)
    assert peak_usage > 0.9
    assert peak_waiting >= 1
    assert value(fams, "vllm:num_preemptions_total") >= 1
    assert value(fams, "vllm:request_success_total", finished_reason="length") == 10
    assert value(fams, "vllm:kv_cache_usage_perc") == 0


async def test_a_repeated_system_prompt_shows_prefix_cache_hits_in_tokens(
    openai_for: OpenAIFactory, fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    api = openai_for(fleet.urls["awq"])
    system = "You answer questions about the attached handbook. " + "Handbook text. " * 400
    usages = []
    for question in ("Who signs leave requests?", "When are expenses due?"):
        response = await api.chat.completions.create(
            model="llama3-8b-awq",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=4,
        )
        assert response.usage is not None
        usages.append(response.usage.prompt_tokens)
    fams = await scrape(http, fleet.urls["awq"])
    shared = 1 + 4 + len(system) // 4 + 1 + 4  # BOS, header, text, end of turn, user header
    assert value(fams, "vllm:prefix_cache_queries_total") == sum(usages)
    assert value(fams, "vllm:prefix_cache_hits_total") == shared // 16 * 16
    hits = value(fams, "vllm:prefix_cache_hits_total")
    assert value(fams, "vllm:prompt_tokens_by_source_total", source="local_cache_hit") == hits
    computed = value(fams, "vllm:prompt_tokens_by_source_total", source="local_compute")
    assert computed == sum(usages) - hits
    assert value(fams, "vllm:request_prefill_kv_computed_tokens_sum") == computed


def test_token_buckets_follow_max_model_len() -> None:
    assert build_1_2_5_buckets(512) == (1, 2, 5, 10, 20, 50, 100, 200, 500)
    assert build_1_2_5_buckets(8192)[-1] == 5000
