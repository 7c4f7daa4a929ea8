"""Streams that survive a backend failure, end to end: the official openai client -> the gateway
(uvicorn on loopback) -> simulated vLLM backends whose fault switch breaks a stream at the first
content chunk, in the middle, or just before the finish chunk.

Two replicas of one variant (a1 ranked first: cheaper; a2) and a backend of another variant (q).
The chat prompt is a keyed sample, so both replicas give the same answer word for word: a
continued stream must reproduce it exactly (nothing lost, nothing repeated)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from quantroute.config import parse_config
from quantroute.sim.fleet import FleetHandle, SimBackendSpec, SimFleetConfig, run_fleet_in_thread
from quantroute.sim.text import split_pieces
from quantroute.testing.fake_backend import wait_until
from quantroute.testing.gateway_thread import GatewayThread

PROMPT = "Tell me how rivers shape the land."
ANSWER = (
    "Rivers carry water from high ground to the sea, cutting valleys, moving sand and stones, "
    "feeding farms and cities, and building deltas where they slow down and drop their load."
)
PIECES = split_pieces(ANSWER)
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
LLAMA, QWEN = "llama3-8b-awq", "qwen25-7b-gptq"


@dataclass
class Stack:
    fleet: FleetHandle
    gateway: GatewayThread

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.gateway.url + "/v1", api_key="t", max_retries=0, timeout=30
        )

    def arm(self, backend: str, **fault: Any) -> None:
        r = httpx.put(self.fleet.urls[backend] + "/sim/fault", json=fault)
        assert r.status_code == 204, r.text

    def received(self, backend: str) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = httpx.get(self.fleet.urls[backend] + "/sim/requests").json()
        return body

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.gateway.url + "/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def idle(self) -> bool:
        rows = httpx.get(self.gateway.url + "/admin/backends").json()["backends"]
        return all(r["in_flight"]["requests"] == 0 for r in rows)


def _stack(
    answer: str, groups: list[dict[str, Any]], backends: tuple[str, ...], **policy: Any
) -> Iterator[Stack]:
    profiles = {"a1": LLAMA, "a2": LLAMA, "q": QWEN}
    specs = [SimBackendSpec(id=b, profile=profiles[b]) for b in backends]
    key = {PROMPT: ("chat", answer)}
    cost = {"a1": 1.0, "a2": 5.0, "q": 9.0}  # a1 ranked first, then a2, then q
    with run_fleet_in_thread(
        SimFleetConfig(time_scale=10.0, seed=5, backends=specs), answer_key=key
    ) as fleet:
        rows = [
            {
                "id": b,
                "url": fleet.urls[b],
                "served_model_name": profiles[b],
                "variant": profiles[b],
                "max_seq_len": 8192,
                "capacity": 64,
                "gpu_cost_per_hour": cost[b],
            }
            for b in backends
        ]
        section: dict[str, Any] = {"scrape_interval_s": 0.1, "tie_tolerance": 0.0, **policy}
        config = parse_config(
            {
                "backends": rows,
                "groups": groups,
                "policy": section,
                # The breaks these tests inject would also make passive health eject a1 after a
                # few of them; here the subject is continuation, so a1 stays in rotation.
                "resilience": {"outlier_detection": {"enabled": False}},
            }
        )
        with GatewayThread(config) as gateway:
            stack = Stack(fleet, gateway)
            rows_fresh = lambda: all(  # noqa: E731
                r["state"] == "fresh"
                for r in httpx.get(gateway.url + "/admin/backends").json()["backends"]
            )
            assert wait_until(rows_fresh, 10)
            yield stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    yield from _stack(ANSWER, [{"name": "auto", "variants": [LLAMA, QWEN]}], ("a1", "a2", "q"))


@pytest.fixture(autouse=True)
def _disarm(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        for url in stack.fleet.urls.values():
            httpx.delete(url + "/sim/fault")


def _collect(stream: Any) -> tuple[str, list[str], Any, set[str]]:
    text, finishes, usage, ids = "", [], None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            text += piece or ""
            if choice.finish_reason is not None:
                finishes.append(choice.finish_reason)
    return text, finishes, usage, ids


def _chat(stack: Stack, **extra: Any) -> tuple[str, list[str], Any, set[str]]:
    stream = stack.client().chat.completions.create(
        model="auto",
        messages=MESSAGES,
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    return _collect(stream)


def test_an_unbroken_stream_is_the_whole_answer_from_a1(stack: Stack) -> None:
    """The baseline the continued streams are held to (and proof a1 is ranked first)."""
    before = len(stack.received("a1"))
    text, finishes, usage, ids = _chat(stack)
    assert text == ANSWER and finishes == ["stop"] and len(ids) == 1
    assert usage.completion_tokens == len(PIECES)
    assert len(stack.received("a1")) == before + 1


@pytest.mark.parametrize(
    "after",
    [0, len(PIECES) // 2, len(PIECES) - 1],
    ids=["at-first-content-chunk", "middle", "just-before-finish"],
)
def test_a_stream_reset_mid_answer_is_continued_on_the_other_replica(
    stack: Stack, after: int
) -> None:
    _, _, baseline, _ = _chat(stack)
    stack.arm("a1", mode="reset", after_content_chunks=after)
    completed = stack.metric("quantroute_continuations_total", outcome="completed")
    a2_before = len(stack.received("a2"))

    text, finishes, usage, ids = _chat(stack)

    assert text == ANSWER  # prefix from a1 + continuation from a2: nothing lost or repeated
    assert finishes == ["stop"] and len(ids) == 1
    assert usage.completion_tokens == len(PIECES)
    assert usage.prompt_tokens == baseline.prompt_tokens
    assert usage.total_tokens == baseline.prompt_tokens + len(PIECES)
    sent = stack.received("a2")[a2_before:]
    assert len(sent) == 1
    body = sent[0]
    assert body["max_tokens"] == 200 - after
    if after == 0:  # nothing relayed yet: the same request, from the start
        assert body["messages"] == MESSAGES and "continue_final_message" not in body
    else:
        assert body["messages"] == [
            *MESSAGES,
            {"role": "assistant", "content": "".join(PIECES[:after])},
        ]
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
    assert stack.metric("quantroute_continuations_total", outcome="completed") == completed + 1
    assert stack.metric(
        "quantroute_continuations_total", **{"from": "a1", "to": "a2", "outcome": "completed"}
    )
    assert wait_until(stack.idle, 5)


@pytest.mark.parametrize("mode", ["close", "error_event"])
def test_a_clean_close_or_an_error_event_mid_stream_is_continued(stack: Stack, mode: str) -> None:
    stack.arm("a1", mode=mode, after_content_chunks=7)
    text, finishes, usage, _ = _chat(stack)
    assert text == ANSWER and finishes == ["stop"]
    assert usage.completion_tokens == len(PIECES)
    assert stack.received("a2")[-1]["messages"][-1]["content"] == "".join(PIECES[:7])


def test_the_wire_is_one_coherent_stream(stack: Stack) -> None:
    """Raw SSE: one role chunk, one id/created/model throughout, the comment line, one finish,
    one usage chunk, one [DONE]; the client did not ask for usage, so none is relayed."""
    stack.arm("a1", mode="reset", after_content_chunks=5)
    body = {"model": "auto", "messages": MESSAGES, "max_tokens": 200, "stream": True}
    r = httpx.post(stack.gateway.url + "/v1/chat/completions", json=body, timeout=30)
    events = [e for e in r.text.split("\n\n") if e]
    assert events.count("data: [DONE]") == 1 and events[-1] == "data: [DONE]"
    assert events.count(": quantroute continued on a2") == 1
    import json

    chunks = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert chunks[0]["model"] == LLAMA
    assert sum(1 for c in chunks for ch in c["choices"] if "role" in ch["delta"]) == 1
    assert sum(1 for c in chunks for ch in c["choices"] if ch["finish_reason"]) == 1
    assert not any("usage" in c and not c["choices"] for c in chunks)
    comment = events.index(": quantroute continued on a2")
    before = "".join(ch["delta"].get("content", "") for e in events[:comment] if e.startswith("data: {") for ch in json.loads(e[6:])["choices"])  # fmt: skip
    assert before == "".join(PIECES[:5])


def test_completions_continue_with_the_text_appended_to_the_prompt(stack: Stack) -> None:
    stack.arm("a1", mode="reset", after_content_chunks=9)
    stream = stack.client().completions.create(
        model="auto",
        prompt="Once upon a time",
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    text, finishes, usage, ids = _collect(stream)
    sent = stack.received("a2")[-1]
    relayed = sent["prompt"].removeprefix("Once upon a time")
    assert sent["prompt"] == "Once upon a time" + relayed and len(split_pieces(relayed)) == 9
    assert text.startswith(relayed) and len(split_pieces(text)) == 30
    assert sent["max_tokens"] == 21
    assert finishes == ["length"] and len(ids) == 1 and usage.completion_tokens == 30


def test_a_seeded_request_is_not_continued(stack: Stack) -> None:
    """A client seed promises one sampling run: the stream ends with the error event as before."""
    stack.arm("a1", mode="reset", after_content_chunks=4)
    refused = stack.metric("quantroute_continuations_total", outcome="not_faithful")
    a2_before = len(stack.received("a2"))
    with pytest.raises(openai.APIError):
        _chat(stack, seed=7)
    assert len(stack.received("a2")) == a2_before
    assert stack.metric("quantroute_continuations_total", outcome="not_faithful") == refused + 1


def test_a_half_emitted_json_schema_is_not_continued(stack: Stack) -> None:
    stack.arm("a1", mode="reset", after_content_chunks=4)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    a2_before = len(stack.received("a2"))
    with pytest.raises(openai.APIError):
        _chat(stack, response_format=fmt)
    assert len(stack.received("a2")) == a2_before


def test_a_continuation_that_breaks_too_ends_with_the_error_event(stack: Stack) -> None:
    """At most one continuation per request (the default)."""
    stack.arm("a1", mode="reset", after_content_chunks=3)
    stack.arm("a2", mode="reset", after_content_chunks=3)
    q_before = len(stack.received("q"))
    with pytest.raises(openai.APIError):
        _chat(stack)
    assert len(stack.received("q")) == q_before
    assert stack.metric(
        "quantroute_continuations_total", **{"from": "a1", "to": "a2", "outcome": "failed"}
    )
    assert wait_until(stack.idle, 5)


@pytest.fixture(scope="module")
def pair() -> Iterator[Stack]:
    """One replica of each variant; 'strict' keeps continuations within a variant."""
    groups: list[dict[str, Any]] = [
        {"name": "strict", "variants": [LLAMA, QWEN]},
        {"name": "loose", "variants": [LLAMA, QWEN], "continue_across_variants": True},
    ]
    yield from _stack(ANSWER, groups, ("a1", "q"))


def test_another_variant_continues_only_where_the_group_allows_it(pair: Stack) -> None:
    for group, continued in (("strict", False), ("loose", True)):
        httpx.put(pair.fleet.urls["a1"] + "/sim/fault", json={"after_content_chunks": 5})
        before = len(pair.received("q"))
        stream = pair.client().chat.completions.create(
            model=group, messages=MESSAGES, max_tokens=200, stream=True
        )
        if continued:
            text, finishes, _, _ = _collect(stream)
            assert text.startswith("".join(PIECES[:5])) and finishes
            assert pair.received("q")[-1]["messages"][-1]["role"] == "assistant"
        else:
            with pytest.raises(openai.APIError):
                _collect(stream)
            assert len(pair.received("q")) == before
    assert pair.metric("quantroute_continuations_total", to="none", outcome="no_backend") == 1
    assert pair.metric("quantroute_continuations_total", to="q", outcome="completed") == 1


def test_a_stalled_backend_is_continued_after_the_upstream_read_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The idle-gap trigger: a1 stops sending mid-answer; the gap between chunks passes the
    stream's idle limit (``upstream_timeouts.stream_idle_s``) and the stream goes on from a2.
    The continuation is in the decisions log."""
    groups = [{"name": "auto", "variants": [LLAMA]}]
    timeouts = {"upstream_timeouts": {"stream_idle_s": 1.0}}
    for stack in _stack(ANSWER, groups, ("a1", "a2"), **timeouts):
        stack.arm("a1", mode="stall", after_content_chunks=6, stall_s=20)

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "quantroute.decisions"]

        def continued() -> bool:  # counted as the stream ends: maybe after the client's last read
            return any("continuation from=a1 to=a2 outcome=completed" in ln for ln in lines())

        with caplog.at_level("INFO", logger="quantroute.decisions"):
            text, finishes, usage, _ = _chat(stack)
            assert wait_until(continued, 5), lines()
        assert text == ANSWER and finishes == ["stop"]
        assert usage.completion_tokens == len(PIECES)
        assert stack.received("a2")[-1]["messages"][-1]["content"] == "".join(PIECES[:6])
        assert any("TimeoutError" in ln for ln in lines() if "continuation" in ln), lines()
