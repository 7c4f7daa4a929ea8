"""``/v1/responses`` of one simulated backend, through the official OpenAI client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from openai.types.responses import (
    EasyInputMessageParam,
    ResponseInputParam,
    ResponseOutputMessageParam,
)

from quantroute.sim.fleet import SimBackendSpec, SimFleet, SimFleetConfig
from quantroute.sim.text import chat_prompt_tokens

from .conftest import ANSWER_KEY, OpenAIFactory, fleet_config
from .test_disconnect import LONG_KEY, LONG_PROMPT, wait_for_abort

PROMPT = "Say hello."
ANSWER = ANSWER_KEY[PROMPT][1]


@pytest.fixture
async def stored_fleet() -> AsyncIterator[SimFleet]:
    """One backend with vLLM's response store enabled (VLLM_ENABLE_RESPONSES_API_STORE=1)."""
    config = SimFleetConfig(
        time_scale=100,
        seed=3,
        backends=[SimBackendSpec(id="awq", profile="llama3-8b-awq", responses_store=True)],
    )
    async with SimFleet(config, answer_key=ANSWER_KEY) as running:
        yield running


async def test_non_stream_response_carries_the_answer_and_usage(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    client = openai_for(fleet.urls["awq"])
    response = await client.responses.create(
        model="llama3-8b-awq", instructions="Be brief.", input=PROMPT
    )
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == ANSWER
    assert response.instructions == "Be brief."
    assert response.usage is not None
    assert response.usage.input_tokens == chat_prompt_tokens(["Be brief.", PROMPT])
    assert response.usage.output_tokens == len(ANSWER.split())
    assert fleet.received("awq")[-1] == (
        "/v1/responses",
        {"model": "llama3-8b-awq", "instructions": "Be brief.", "input": PROMPT},
    )


async def test_message_items_and_content_parts_make_the_prompt(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    hi: EasyInputMessageParam = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Hi"}],
    }
    # an earlier answer replayed as the output item it was (the SDK's shape for it)
    hello: ResponseOutputMessageParam = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
    }
    items: ResponseInputParam = [
        {"role": "developer", "content": "Answer in English."},
        hi,
        hello,
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]},
    ]
    response = await openai_for(fleet.urls["awq"]).responses.create(
        model="llama3-8b-awq",
        input=items,
    )
    assert response.output_text == ANSWER  # the last user message is what the model answers
    assert response.usage is not None
    texts = ["Answer in English.", "Hi", "Hello.", PROMPT]
    assert response.usage.input_tokens == chat_prompt_tokens(texts)


async def test_stream_sends_vllms_typed_events_in_order(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    stream = await openai_for(fleet.urls["awq"]).responses.create(
        model="llama3-8b-awq", input=PROMPT, stream=True
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(d.delta for d in deltas) == ANSWER
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output_text == ANSWER
    assert final.response.usage is not None
    assert final.response.usage.output_tokens == len(deltas)
    assert events[0].type == "response.created" and events[0].response.usage is None


async def test_max_output_tokens_makes_the_response_incomplete(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    response = await openai_for(fleet.urls["awq"]).responses.create(
        model="llama3-8b-awq", input="hello", max_output_tokens=16
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 16


async def test_without_its_store_vllm_knows_no_earlier_response(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    client = openai_for(fleet.urls["awq"])
    first = await client.responses.create(model="llama3-8b-awq", input=PROMPT)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(
            model="llama3-8b-awq", input="And again?", previous_response_id=first.id
        )
    assert caught.value.body == {
        "message": f"Response with id '{first.id}' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model="llama3-8b-awq", input=PROMPT, background=True)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "background"


async def test_with_its_store_vllm_continues_a_conversation_it_served(
    openai_for: OpenAIFactory, stored_fleet: SimFleet
) -> None:
    client = openai_for(stored_fleet.urls["awq"])
    first = await client.responses.create(
        model="llama3-8b-awq", instructions="Be brief.", input=PROMPT
    )
    second = await client.responses.create(
        model="llama3-8b-awq", input="And again?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None  # the earlier turn and its answer, without the instructions
    assert second.usage.input_tokens == chat_prompt_tokens([PROMPT, ANSWER, "And again?"])
    retrieved = await client.responses.retrieve(second.id)
    assert retrieved.output_text == second.output_text


async def test_wrong_model_and_bad_body_get_vllms_error_bodies(
    openai_for: OpenAIFactory, fleet: SimFleet, http: httpx.AsyncClient
) -> None:
    with pytest.raises(openai.NotFoundError):
        await openai_for(fleet.urls["awq"]).responses.create(model="nope", input=PROMPT)
    reply = await http.post(fleet.urls["awq"] + "/v1/responses", json={"model": "llama3-8b-awq"})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "BadRequestError"


async def test_prompt_over_max_model_len_is_refused(
    openai_for: OpenAIFactory, fleet: SimFleet
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_for(fleet.urls["small"]).responses.create(
            model="tiny-llama", input="word " * 600
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "input_tokens"


async def test_disconnect_mid_stream_aborts_the_response(http: httpx.AsyncClient) -> None:
    async with SimFleet(fleet_config(time_scale=5), answer_key=LONG_KEY) as slow:
        body = {"model": "llama3-8b-awq", "input": LONG_PROMPT, "stream": True}
        async with http.stream("POST", slow.urls["awq"] + "/v1/responses", json=body) as reply:
            lines = [line async for line in _first_lines(reply, 12)]
        assert lines[0] == "event: response.created"
        after = await wait_for_abort(http, slow)
        assert after == {"aborted": 1, "running": 0, "kv": 0, "stopped": 0}


async def _first_lines(reply: httpx.Response, n: int) -> AsyncIterator[str]:
    count = 0
    async for line in reply.aiter_lines():
        if line:
            yield line
            count += 1
        if count == n:
            return
