"""The engine model on its own: KV blocks, batching, preemption, latencies."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from quantroute.sim.engine import (
    Engine,
    EngineConfig,
    EngineRequest,
    PromptTooLongError,
    StepOutput,
)
from quantroute.sim.kv_blocks import block_hashes
from quantroute.sim.profiles import load_profiles
from quantroute.sim.roofline import ScheduledChunk

MAX_STEPS = 20_000


def make_engine(variant: str = "llama3-8b-awq", **overrides: Any) -> Engine:
    """An engine as vLLM would build it; ``overrides`` are from_profile's keyword arguments."""
    book = load_profiles()
    profile = book.variant(variant)
    config = EngineConfig.from_profile(profile, book.gpu_of(profile), book.engine, **overrides)
    return Engine(config)


def run(engine: Engine, now: float = 0.0, max_steps: int = MAX_STEPS) -> list[StepOutput]:
    outputs: list[StepOutput] = []
    for _ in range(max_steps):
        if not engine.has_work():
            return outputs
        out = engine.step(now)
        now = out.end
        outputs.append(out)
    raise AssertionError("engine did not drain")


def test_kv_usage_rises_with_concurrent_long_prompts_and_falls_when_done() -> None:
    engine = make_engine(num_gpu_blocks_override=2048)
    assert engine.stats().kv_cache_usage == 0.0
    for i in range(8):
        engine.add_request(EngineRequest(f"r{i}", 3000, max_tokens=50), now=0.0)
    now = 0.0
    usages = []
    for _ in range(40):
        out = engine.step(now)
        now = out.end
        usages.append(engine.stats().kv_cache_usage)
    assert max(usages) > 0.7  # 8 x 3050 tokens of 32768
    assert usages == sorted(usages)  # prefill chunks only ever add blocks here
    run(engine, now)
    assert engine.stats().kv_cache_usage == 0.0
    assert engine.stats().num_running == 0


def test_requests_wait_when_blocks_run_out() -> None:
    engine = make_engine(num_gpu_blocks_override=64, max_model_len=1024)  # 1024 tokens
    for i in range(4):
        engine.add_request(EngineRequest(f"r{i}", 600, max_tokens=20), now=0.0)
    out = engine.step(0.0)
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting) == (1, 3)
    assert stats.kv_cache_usage == pytest.approx(38 / 64)
    rest = run(engine, out.end)
    finished = [f for o in [out, *rest] for f in o.finished]
    assert [f.request_id for f in finished] == ["r0", "r1", "r2", "r3"]  # FCFS
    queue_times = [f.queue_time or 0.0 for f in finished]
    assert queue_times[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(queue_times))


def test_preemption_under_overload_is_counted_and_recomputed() -> None:
    engine = make_engine(num_gpu_blocks_override=64, max_model_len=1024)
    for i in range(3):  # 3 x 19 blocks fit at first; growing to 3 x 32 blocks cannot
        engine.add_request(EngineRequest(f"r{i}", 300, natural_output_tokens=200), now=0.0)
    outputs = run(engine)
    step_preemptions = sum(o.preemptions for o in outputs)
    assert step_preemptions > 0
    assert engine.stats().num_preemptions_total == step_preemptions
    finished = {f.request_id: f for o in outputs for f in o.finished}
    assert {f.output_tokens for f in finished.values()} == {200}
    assert {f.finish_reason for f in finished.values()} == {"stop"}
    assert sum(f.num_preemptions for f in finished.values()) == step_preemptions
    assert finished["r2"].num_preemptions > 0  # the youngest is the victim
    assert finished["r0"].num_preemptions == 0
    indexes: dict[str, list[int]] = {}
    for o in outputs:
        for t in o.tokens:
            indexes.setdefault(t.request_id, []).append(t.index)
    assert all(v == list(range(200)) for v in indexes.values())


def test_ttft_grows_with_the_queue() -> None:
    engine = make_engine(max_num_seqs=4)
    for i in range(16):
        engine.add_request(EngineRequest(f"r{i}", 500, natural_output_tokens=100), now=0.0)
    outputs = run(engine)
    ttft = {f.request_id: f.ttft or 0.0 for o in outputs for f in o.finished}
    waves = [[ttft[f"r{i}"] for i in range(w * 4, w * 4 + 4)] for w in range(4)]
    assert all(max(a) < min(b) for a, b in itertools.pairwise(waves))


def test_prompt_over_max_model_len_is_rejected() -> None:
    engine = make_engine()
    with pytest.raises(PromptTooLongError) as caught:
        engine.add_request(EngineRequest("long", 8193), now=0.0)
    assert caught.value.max_model_len == 8192
    with pytest.raises(PromptTooLongError):
        engine.add_request(EngineRequest("full", 8192), now=0.0)
    assert not engine.has_work()


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "natural", "expected_tokens", "reason"),
    [
        (100, 10, 50, 10, "length"),
        (100, 80, 50, 50, "stop"),
        (100, None, 50, 50, "stop"),
        (8000, None, 500, 192, "length"),  # prompt + output capped at max_model_len
        (8000, 1000, 500, 192, "length"),
    ],
)
def test_output_length_and_finish_reason(
    prompt: int, max_tokens: int | None, natural: int, expected_tokens: int, reason: str
) -> None:
    engine = make_engine()
    engine.add_request(EngineRequest("r", prompt, max_tokens, natural), now=0.0)
    (done,) = [f for o in run(engine) for f in o.finished]
    assert (done.output_tokens, done.finish_reason) == (expected_tokens, reason)


@pytest.mark.parametrize(
    ("ignore_eos", "min_tokens", "expected_tokens", "reason"),
    [(True, 0, 300, "length"), (False, 120, 120, "stop"), (False, 0, 50, "stop")],
)
def test_ignore_eos_and_min_tokens(
    ignore_eos: bool, min_tokens: int, expected_tokens: int, reason: str
) -> None:
    engine = make_engine()
    request = EngineRequest("r", 100, 300, 50, ignore_eos=ignore_eos, min_tokens=min_tokens)
    engine.add_request(request, now=0.0)
    (done,) = [f for o in run(engine) for f in o.finished]
    assert (done.output_tokens, done.finish_reason) == (expected_tokens, reason)


def test_abort_frees_blocks_wherever_the_request_is() -> None:
    engine = make_engine(num_gpu_blocks_override=64, max_model_len=1024)
    engine.add_request(EngineRequest("a", 600), now=0.0)
    engine.add_request(EngineRequest("b", 600), now=0.0)
    out = engine.step(0.0)
    assert engine.stats().num_waiting == 1
    waiting = engine.abort("b", out.end)
    assert waiting is not None and waiting.finish_reason == "abort" and waiting.ttft is None
    running = engine.abort("a", out.end)
    assert running is not None and running.prompt_tokens == 600
    assert engine.stats().num_free_blocks == 64
    assert engine.abort("a", out.end) is None
    assert not engine.has_work()


def test_same_seed_same_run() -> None:
    def trace(seed: int) -> list[tuple[str, int, float]]:
        engine = make_engine(seed=seed, num_gpu_blocks_override=200, max_model_len=2048)
        for i in range(12):
            engine.add_request(EngineRequest(f"r{i}", 100 + 37 * i), now=0.1 * i)
        return [(t.request_id, t.index, t.time) for o in run(engine) for t in o.tokens]

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_step_time_grows_with_batch_and_context() -> None:
    cost = make_engine().config.cost
    one = cost.duration([ScheduledChunk(1000, 1)])
    batch = cost.duration([ScheduledChunk(1000, 1)] * 64)
    long_context = cost.duration([ScheduledChunk(6000, 1)] * 64)
    prefill = cost.duration([ScheduledChunk(0, 2048)])
    assert one < batch < long_context
    assert prefill > batch
    assert 0.005 < one < 0.05  # an 8B AWQ decode step on an L40S: tens of milliseconds


def test_kv_blocks_follow_from_memory() -> None:
    book = load_profiles()
    blocks = {
        name: EngineConfig.from_profile(v, book.gpu_of(v), book.engine).num_gpu_blocks
        for name, v in book.variants.items()
    }
    assert book.variant("llama3-70b-awq").kv_bytes_per_token == 80 * 8 * 128 * 2 * 2
    assert book.variant("qwen25-7b-gptq").kv_bytes_per_token == 28 * 4 * 128 * 2 * 2
    # 70B keeps far less KV on its H100 than 8B FP16 does; Qwen's 4 KV heads fit most
    assert blocks["llama3-70b-awq"] < blocks["llama3-8b-awq"] < blocks["llama3-8b-fp16"]
    assert blocks["qwen25-7b-gptq"] > blocks["llama3-8b-fp16"]
    halved = EngineConfig.from_profile(
        book.variant("llama3-8b-awq"),
        book.gpus["l40s-48gb"],
        book.engine,
        gpu_memory_utilization=0.5,
    )
    assert halved.num_gpu_blocks < blocks["llama3-8b-awq"] / 2


def test_kv_cache_smaller_than_max_model_len_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than max_model_len"):
        make_engine(num_gpu_blocks_override=8)


# -- prefix caching -------------------------------------------------------------------


def hashed(
    request_id: str,
    tokens: list[str],
    *,
    max_tokens: int | None = None,
    natural_output_tokens: int | None = None,
) -> EngineRequest:
    return EngineRequest(
        request_id,
        len(tokens),
        max_tokens=max_tokens,
        natural_output_tokens=natural_output_tokens,
        block_hashes=block_hashes(tokens, 16),
    )


def prompt(shared: int, own: int, tag: str) -> list[str]:
    return [f"s{i}" for i in range(shared)] + [f"{tag}{i}" for i in range(own)]


def test_a_repeated_prefix_is_reused_and_only_the_rest_is_prefilled() -> None:
    engine = make_engine()
    engine.add_request(hashed("a", prompt(3000, 40, "a"), max_tokens=1), now=0.0)
    first = next(f for o in run(engine) for f in o.finished)
    engine.add_request(hashed("b", prompt(3000, 40, "b"), max_tokens=1), now=100.0)
    outputs = run(engine, 100.0)
    second = next(f for o in outputs for f in o.finished)
    assert second.cached_tokens == 3000 // 16 * 16  # whole blocks of the shared prefix
    assert first.cached_tokens == 0
    assert second.ttft is not None and first.ttft is not None
    assert second.ttft < first.ttft / 4
    stats = engine.stats()
    assert stats.prefix_cache_queries_total == 2 * 3040
    assert stats.prefix_cache_hits_total == 2992
    assert sum(o.prefix_cache_hits for o in outputs) == 2992
    assert sum(o.cached_prompt_tokens for o in outputs) == 2992


def test_the_last_token_is_always_computed() -> None:
    engine = make_engine()
    tokens = prompt(64, 0, "")
    engine.add_request(hashed("a", tokens, max_tokens=1), now=0.0)
    run(engine)
    engine.add_request(hashed("b", tokens, max_tokens=1), now=10.0)
    out = run(engine, 10.0)
    assert out[0].num_scheduled_tokens == 16  # 64 tokens: 3 blocks hit, the 4th recomputed
    assert out[0].prefix_cache_hits == 48


def test_without_hashes_or_with_caching_off_nothing_is_reused() -> None:
    for engine, with_hashes in (
        (make_engine(), False),
        (make_engine(enable_prefix_caching=False), True),
    ):
        for rid in ("a", "b"):
            tokens = prompt(1000, 8, rid)
            request = (
                hashed(rid, tokens, max_tokens=1)
                if with_hashes
                else EngineRequest(rid, 1008, max_tokens=1)
            )
            engine.add_request(request, now=0.0)
            run(engine)
        assert engine.stats().prefix_cache_hits_total == 0


def test_cached_blocks_do_not_count_as_used_and_are_evicted_lru() -> None:
    engine = make_engine(num_gpu_blocks_override=256, max_model_len=2048)  # 4096 tokens
    for i in range(3):  # three distinct 1600-token prompts, one after another
        engine.add_request(hashed(f"p{i}", prompt(0, 1600, f"p{i}"), max_tokens=1), now=0.0)
        run(engine)
    assert engine.stats().kv_cache_usage == 0.0  # cached but free
    # 3 x 100 blocks do not fit in 256: p2 took the 56 never-used blocks and the 44 least
    # recently freed, p0's, tail first; p0 keeps its first 56 blocks, p2 all but the last
    again = [hashed(f"q{i}", prompt(0, 1600, f"p{i}"), max_tokens=1) for i in (0, 2)]
    for request in again:
        engine.add_request(request, now=0.0)
    outputs = run(engine)
    finished = {f.request_id: f.cached_tokens for o in outputs for f in o.finished}
    assert finished == {"q0": 56 * 16, "q2": 99 * 16}


def test_a_preempted_request_is_not_counted_again_in_the_exported_queries() -> None:
    engine = make_engine(num_gpu_blocks_override=64, max_model_len=1024)
    for i in range(3):
        tokens = prompt(0, 300, f"r{i}")
        engine.add_request(hashed(f"r{i}", tokens, natural_output_tokens=200), now=0.0)
    outputs = run(engine)
    assert sum(o.preemptions for o in outputs) > 0
    assert engine.stats().prefix_cache_queries_total == 3 * 300
    assert engine.prefix_cache.preempted_queries > 0


def test_prefill_seconds_shrink_with_the_cache() -> None:
    cold, warm = make_engine(enable_prefix_caching=False), make_engine()
    for engine in (cold, warm):
        for i in range(4):
            engine.add_request(hashed(f"r{i}", prompt(4000, 100, f"r{i}"), max_tokens=50), now=0.0)
            run(engine)
    assert cold.stats().prefill_seconds_total > 3 * warm.stats().prefill_seconds_total
    assert warm.stats().prefill_seconds_total > 0
