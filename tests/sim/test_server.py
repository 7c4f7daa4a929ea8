"""One simulated backend over HTTP, through the official OpenAI client."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig
from quantroute.sim.text import chat_prompt_tokens, completion_prompt_tokens

from .conftest import ANSWER_KEY, VLLM_FIXTURES, OpenAIFactory

PROMPT = "What is 17 * 3? Answer with the number only."


async def test_non_stream_chat_answers_from_the_oracle(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": PROMPT},
    ]
    response = await openai_for(fleet.urls["awq"]).chat.completions.create(
        model="llama3-8b-awq", messages=messages
    )
    expected = fleet.backends["awq"].oracle.answer(PROMPT)
    assert expected is not None
    choice = response.choices[0]
    assert choice.message.content == expected
    assert choice.finish_reason == "stop"
    assert response.model == "llama3-8b-awq"
    assert response.id.startswith("chatcmpl-")
    assert response.usage is not None
    assert response.usage.prompt_tokens == chat_prompt_tokens(["Be brief.", PROMPT])


async def test_unkeyed_prompt_gets_filler_up_to_max_tokens(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    response = await openai_for(fleet.urls["awq"]).chat.completions.create(
        model="llama3-8b-awq", messages=[{"role": "user", "content": "hello"}], max_tokens=12
    )
    assert response.usage is not None and response.usage.completion_tokens == 12
    assert response.choices[0].finish_reason == "length"
    assert len((response.choices[0].message.content or "").split()) == 12


async def test_ignore_eos_generates_up_to_max_tokens(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    response = await openai_for(fleet.urls["awq"]).chat.completions.create(
        model="llama3-8b-awq",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=40,
        extra_body={"ignore_eos": True},
    )
    assert response.usage is not None and response.usage.completion_tokens == 40
    assert response.choices[0].finish_reason == "length"
    answer = fleet.backends["awq"].oracle.answer(PROMPT)
    assert answer is not None and (response.choices[0].message.content or "").startswith(answer)


async def test_stream_without_usage(openai_for: OpenAIFactory, fleet: SimFleet) -> None:
    prompt = "Write a Python function add(a, b) returning the sum."
    stream = await openai_for(fleet.urls["awq"]).chat.completions.create(
        model="llama3-8b-awq", messages=[{"role": "user", "content": prompt}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(c.usage is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == fleet.backends["awq"].oracle.answer(prompt)


async def test_stream_with_usage(openai_for: OpenAIFactory, fleet: SimFleet) -> None:
    stream = await openai_for(fleet.urls["awq"]).chat.completions.create(
        model="llama3-8b-awq",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 7
    assert last.usage.prompt_tokens == chat_prompt_tokens(["hi"])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert len(chunks) == 1 + 7 + 1  # role, 7 tokens, usage


async def test_completions_stream_and_not(openai_for: OpenAIFactory, fleet: SimFleet) -> None:
    api = openai_for(fleet.urls["awq"])
    done = await api.completions.create(model="llama3-8b-awq", prompt="Once upon a time")
    assert done.object == "text_completion"
    assert done.usage is not None and done.usage.completion_tokens == 16  # vLLM's default
    assert done.usage.prompt_tokens == completion_prompt_tokens("Once upon a time")
    assert done.choices[0].finish_reason == "length"
    stream = await api.completions.create(
        model="llama3-8b-awq",
        prompt="Once upon a time",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert [c.choices[0].finish_reason for c in chunks[:5]] == [None] * 4 + ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5 + 5


async def test_models_lists_the_served_name_and_max_model_len(
    openai_for: OpenAIFactory, fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    models = await openai_for(fleet.urls["small"]).models.list()
    assert [m.id for m in models.data] == ["tiny-llama"]
    body = (await http.get(fleet.urls["small"] + "/v1/models")).json()
    captured = json.loads((VLLM_FIXTURES / "vllm_models.json").read_text())
    assert body["data"][0]["max_model_len"] == 512
    assert list(body["data"][0]) == list(captured["data"][0])
    assert list(body["data"][0]["permission"][0]) == list(captured["data"][0]["permission"][0])


async def test_health(fleet: SimFleet, http: httpx.AsyncClient) -> None:
    assert (await http.get(fleet.urls["awq"] + "/health")).status_code == 200


async def test_unknown_model_is_404_not_found(
    openai_for: OpenAIFactory, fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.NotFoundError):
        await openai_for(fleet.urls["awq"]).chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
    response = await http.post(
        fleet.urls["awq"] + "/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    assert response.status_code == 404  # validation errors are JSON even when streaming
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("NotFoundError", 404)
    assert error["message"] == "The model `gpt-4` does not exist. Valid aliases: llama3-8b-awq."


def _shape(message: str) -> str:
    return re.sub(r"\d+", "N", message)


async def test_overlong_prompt_gets_vllms_400(
    openai_for: OpenAIFactory, fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    captured = json.loads((VLLM_FIXTURES / "overlen_tokens_body.txt").read_text().split("\n")[0])
    url = fleet.urls["small"] + "/v1/chat/completions"
    too_long = {"model": "tiny-llama", "messages": [{"role": "user", "content": "word " * 450}]}
    response = await http.post(url, json=too_long)
    assert response.status_code == 400
    body = response.json()
    assert list(body["error"]) == list(captured["error"])
    assert _shape(body["error"]["message"]) == _shape(captured["error"]["message"])
    assert body["error"]["param"] == captured["error"]["param"]
    with pytest.raises(openai.BadRequestError):
        await openai_for(fleet.urls["small"]).chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "word " * 450}]
        )


async def test_overlong_prompt_by_characters(fleet: SimFleet, http: httpx.AsyncClient) -> None:
    captured = json.loads((VLLM_FIXTURES / "overlen_body.json").read_text())
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x" * 8724}]}
    response = await http.post(fleet.urls["small"] + "/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json() == captured


async def test_prompt_plus_max_tokens_over_the_limit_is_cut_short(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    content = "abcd " * 392  # 490 tokens + 10 of chat template
    response = await openai_for(fleet.urls["small"]).chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": content}], max_tokens=100
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.total_tokens == 512


@pytest.mark.parametrize(
    "body",
    [
        {"model": "tiny-llama"},
        {"model": "tiny-llama", "messages": []},
        {"model": "tiny-llama", "messages": [{"content": "no role"}]},
        {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], "max_tokens": 600},
    ],
)
async def test_invalid_body_is_400(
    fleet: SimFleet, http: httpx.AsyncClient, body: dict[str, object]
) -> None:
    response = await http.post(fleet.urls["small"] + "/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("BadRequestError", 400)


async def test_malformed_json_is_400(fleet: SimFleet, http: httpx.AsyncClient) -> None:
    response = await http.post(
        fleet.urls["small"] + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"


async def test_answer_key_is_matched_on_the_last_user_message(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    prompt = "Say hello."
    response = await openai_for(fleet.urls["awq"]).chat.completions.create(
        model="llama3-8b-awq",
        messages=[
            {"role": "user", "content": "earlier turn"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": prompt}]},
        ],
    )
    assert response.choices[0].message.content == fleet.backends["awq"].oracle.answer(prompt)
    assert prompt in ANSWER_KEY


async def test_prompt_tokens_details_report_cached_tokens_only_when_enabled_and_nonzero(
    openai_for: OpenAIFactory,
) -> None:
    spec = SimBackendSpec(id="d", profile="llama3-8b-awq", enable_prompt_tokens_details=True)
    instructions = "Shared instructions for every ticket. " * 60
    system: ChatCompletionMessageParam = {"role": "system", "content": instructions}
    async with SimFleet(SimFleetConfig(time_scale=100, backends=[spec])) as fleet:
        api = openai_for(fleet.urls["d"])
        first = await api.chat.completions.create(
            model="llama3-8b-awq",
            messages=[system, {"role": "user", "content": "Ticket one."}],
            max_tokens=2,
        )
        stream = await api.chat.completions.create(
            model="llama3-8b-awq",
            messages=[system, {"role": "user", "content": "Ticket two."}],
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        usages = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert first.usage is not None
    assert first.usage.prompt_tokens_details is None  # nothing was cached: vLLM leaves it unset
    (usage,) = usages
    assert usage.prompt_tokens_details is not None
    # shared: BOS, system header, its 570 text tokens, end of turn, user header, "Tick"
    shared = 1 + 4 + len(instructions) // 4 + 1 + 4 + 1
    assert usage.prompt_tokens_details.cached_tokens == shared // 16 * 16
